//! Replacing a file a person keeps (Claude Desktop's config, our own
//! config TOML) without ever leaving it half-written or cutting a link.
//!
//! Both `install-claude` and `calibrate --apply` edit files people keep by
//! hand, often as symlinks into a dotfiles repository. Writing the new text
//! to a temporary file beside the target, syncing it and renaming it over
//! the target means a crash leaves either the old file or the new one;
//! resolving a symlink first means the link survives and its target is what
//! changes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file `path` names: the target of a symlink (followed to the end),
/// else `path` itself (which may not exist yet).
pub fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path),
        _ => Ok(path.to_path_buf()),
    }
}

/// Replaces the contents of `path` (already [`resolve`]d) with `text`: its
/// directory is created if missing, the text is written to a temporary
/// file beside it and synced, given the old file's permissions, and renamed
/// over it. On failure the temporary file is removed and `path` is as it
/// was. An existing file this user may not write is refused, as writing it
/// in place would be: a rename needs only the directory's permission, and
/// would quietly replace a file its owner made read-only.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    if let Err(e) = std::fs::OpenOptions::new().append(true).open(path)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(std::io::Error::new(
            e.kind(),
            format!("{} is not writable (read-only): {e}", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        // Created for the owner alone: the text may hold keys (Claude
        // Desktop's config) or a webhook token, and a default-mode file
        // would be readable by others until its mode was copied over.
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut f = open.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlinked file is replaced where it points: the link stays a
    /// link, the target gets the text, its mode is kept, no temp is left.
    #[cfg(unix)]
    #[test]
    fn a_symlink_survives_and_its_target_changes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("dotfiles/config.toml");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let resolved = resolve(&link).unwrap();
        replace(&resolved, "new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let left: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A missing file (and directory) is created.
        let fresh = dir.path().join("a/b/new.toml");
        replace(&resolve(&fresh).unwrap(), "x").unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "x");
    }
}
