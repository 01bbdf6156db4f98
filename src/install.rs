//! `install-claude`: adds (or updates) this server in Claude Desktop's
//! `claude_desktop_config.json`.
//!
//! The merge is a pure function over [`serde_json::Value`]; the file
//! operations around it never lose the user's file: an unparseable file is
//! refused untouched, an existing file is copied to a timestamped `.bak`
//! first (the newest [`KEEP_BACKUPS`] of them are kept), and the new text
//! is written to a temporary file in the same directory and renamed over
//! the old one.
//!
//! Only `mcpServers.ai-cost-optimizer.command` and `.args` are written; every
//! other server, key and `env` value stays as it was. (serde_json's map is
//! ordered by key, so a rewritten file lists keys alphabetically.)

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The key of this server under `mcpServers`.
pub const SERVER_KEY: &str = "ai-cost-optimizer";

/// Why the config could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The existing file is not a JSON object we can edit; it was not touched.
    #[error(
        "{path} is not valid Claude Desktop config JSON ({reason}); it was left untouched. Fix or move it, then run install-claude again"
    )]
    Unparseable {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading, backing up or writing failed.
    #[error("{0}")]
    Io(String),
}

/// What [`merge_entry`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The entry was added.
    Added,
    /// An existing entry got a new command or args.
    Updated {
        /// Its command before, if it had one.
        previous_command: Option<String>,
    },
    /// The entry already had this command and args.
    Unchanged,
}

/// The default location of `claude_desktop_config.json` for an OS
/// (`std::env::consts::OS` values), reading `HOME`, `APPDATA`,
/// `LOCALAPPDATA` and `XDG_CONFIG_HOME` through `env`.
///
/// On Windows, Claude Desktop installed from claude.ai or the Store (an
/// MSIX package, the installer since February 2026) reads its config from
/// its package's `LocalCache\Roaming\Claude`; the file at
/// `%APPDATA%\Claude` is never read there, so writing it "worked" and did
/// nothing. That package directory is used when there is one.
pub fn default_config_path_for(
    os: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    const FILE: &str = "claude_desktop_config.json";
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let unset = |what: &str| {
        format!("cannot find Claude Desktop's config directory ({what} unset); pass --config PATH")
    };
    let dir = match os {
        "macos" => PathBuf::from(get("HOME").ok_or_else(|| unset("HOME"))?)
            .join("Library")
            .join("Application Support")
            .join("Claude"),
        "windows" => {
            if let Some(local) = get("LOCALAPPDATA")
                && let Some(dir) = msix_config_dir(&PathBuf::from(local))?
            {
                return Ok(dir.join(FILE));
            }
            PathBuf::from(get("APPDATA").ok_or_else(|| unset("APPDATA"))?).join("Claude")
        }
        _ => match get("XDG_CONFIG_HOME") {
            Some(x) => PathBuf::from(x).join("Claude"),
            None => PathBuf::from(get("HOME").ok_or_else(|| unset("HOME"))?)
                .join(".config")
                .join("Claude"),
        },
    };
    Ok(dir.join(FILE))
}

/// The config directory of an MSIX-installed Claude Desktop under
/// `%LOCALAPPDATA%`: `Packages\Claude_<publisher id>\LocalCache\Roaming\Claude`.
/// `None` without such a package; an error when several are installed and
/// not exactly one of them has a config file (which one is meant cannot be
/// told).
fn msix_config_dir(local_app_data: &Path) -> Result<Option<PathBuf>, String> {
    let Ok(entries) = std::fs::read_dir(local_app_data.join("Packages")) else {
        return Ok(None);
    };
    let packages: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("Claude_"))
        .map(|e| e.path().join("LocalCache").join("Roaming").join("Claude"))
        .collect();
    match packages.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => {
            let with_config: Vec<&PathBuf> = many
                .iter()
                .filter(|d| d.join("claude_desktop_config.json").is_file())
                .collect();
            match with_config.as_slice() {
                [one] => Ok(Some((*one).clone())),
                _ => Err(format!(
                    "several Claude Desktop packages are installed ({}); pass --config with the \
                     claude_desktop_config.json of the one you use",
                    many.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// The default config path on this machine.
pub fn default_config_path() -> Result<PathBuf, String> {
    default_config_path_for(std::env::consts::OS, &|k| std::env::var(k).ok())
}

/// Parses the config file's text. Empty (or whitespace-only) text is an
/// empty config; anything else must be a JSON object whose `mcpServers`, if
/// present, is an object.
pub fn parse_config(text: &str) -> Result<Value, String> {
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(obj) = v.as_object() else {
        return Err("the top level is not a JSON object".into());
    };
    if let Some(s) = obj.get("mcpServers")
        && !s.is_object()
    {
        return Err("\"mcpServers\" is not a JSON object".into());
    }
    Ok(v)
}

/// Sets `mcpServers.ai-cost-optimizer.command` and `.args` in a parsed
/// config (see [`parse_config`]), creating what is missing. A new entry gets
/// an empty `env`; an existing entry keeps its `env` and any other key.
pub fn merge_entry(config: &mut Value, command: &str, args: &[String]) -> Change {
    let root = match config {
        Value::Object(m) => m,
        other => {
            *other = Value::Object(Map::new());
            other.as_object_mut().expect("just made an object")
        }
    };
    let servers = root
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    if !servers.is_object() {
        *servers = Value::Object(Map::new());
    }
    let servers = servers.as_object_mut().expect("checked above");
    let new_args = Value::Array(args.iter().map(|a| Value::String(a.clone())).collect());
    match servers.get_mut(SERVER_KEY) {
        Some(Value::Object(entry)) => {
            let previous_command = entry
                .get("command")
                .and_then(Value::as_str)
                .map(str::to_string);
            let same = previous_command.as_deref() == Some(command)
                && entry.get("args").unwrap_or(&json!([])) == &new_args;
            entry.insert("command".into(), Value::String(command.into()));
            entry.insert("args".into(), new_args);
            if same {
                Change::Unchanged
            } else {
                Change::Updated { previous_command }
            }
        }
        _ => {
            servers.insert(
                SERVER_KEY.into(),
                json!({"command": command, "args": new_args, "env": {}}),
            );
            Change::Added
        }
    }
}

/// The text written to the file: pretty JSON with a final newline.
pub fn render(config: &Value) -> String {
    let mut s = serde_json::to_string_pretty(config).expect("a Value always serialises");
    s.push('\n');
    s
}

/// `text` (a config as [`render`] wrote it) with the other servers' entries
/// (left as they are) not shown, and the values of this server's `env`
/// replaced: they hold API keys and tokens (in `env`, `headers`, `args`,
/// even a `url`), and a dry run's output gets pasted into bug reports and
/// CI logs.
fn hide_secrets(text: &str) -> String {
    let Ok(mut config) = serde_json::from_str::<Value>(text) else {
        return "(not shown: the config did not parse)".into();
    };
    if let Some(servers) = config.get_mut("mcpServers").and_then(Value::as_object_mut) {
        for (name, server) in servers.iter_mut() {
            if name != SERVER_KEY {
                *server = Value::String("(kept as it is; not shown)".into());
                continue;
            }
            for key in ["env", "headers"] {
                if let Some(map) = server.get_mut(key).and_then(Value::as_object_mut) {
                    for v in map.values_mut() {
                        if v.as_str().is_some_and(|s| !s.is_empty()) || !v.is_string() {
                            *v = Value::String("(hidden)".into());
                        }
                    }
                }
            }
        }
    }
    render(&config)
}

/// What `install-claude` should do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The config file to edit.
    pub config_path: PathBuf,
    /// The server command (an absolute path to the binary).
    pub command: PathBuf,
    /// Show the result without writing anything.
    pub dry_run: bool,
}

/// What `install-claude` did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The config file.
    pub config_path: PathBuf,
    /// The command written.
    pub command: String,
    /// Added, updated or unchanged.
    pub change: Change,
    /// The file's new text.
    pub text: String,
    /// The backup made of the old file, if any.
    pub backup: Option<PathBuf>,
    /// Older backups of ours removed, beyond the newest [`KEEP_BACKUPS`].
    pub pruned: Vec<PathBuf>,
    /// True when nothing was written (dry run or unchanged).
    pub wrote: bool,
}

/// Edits the config file as [`InstallOptions`] says.
pub fn install(opts: &InstallOptions, now_ms: i64) -> Result<InstallReport, InstallError> {
    // A config file that is a symlink (kept by a dotfile manager) is edited
    // where it points: replacing the link with a file would cut it off.
    let resolved = crate::atomic_file::resolve(&opts.config_path).map_err(|e| {
        InstallError::Io(format!(
            "cannot follow the symlink {}: {e}",
            opts.config_path.display()
        ))
    })?;
    let path = &resolved;
    let shown = path.display().to_string();
    let old = match std::fs::read(path) {
        Ok(bytes) => Some(
            String::from_utf8(bytes).map_err(|_| InstallError::Unparseable {
                path: shown.clone(),
                reason: "not UTF-8 text".into(),
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(InstallError::Io(format!("cannot read {shown}: {e}"))),
    };
    let mut config =
        parse_config(old.as_deref().unwrap_or("")).map_err(|reason| InstallError::Unparseable {
            path: shown.clone(),
            reason,
        })?;
    let command = opts.command.to_string_lossy().into_owned();
    let change = merge_entry(&mut config, &command, &[]);
    let text = render(&config);
    let mut report = InstallReport {
        config_path: opts.config_path.clone(),
        command,
        change,
        text,
        backup: None,
        pruned: Vec::new(),
        wrote: false,
    };
    if opts.dry_run || (report.change == Change::Unchanged && old.is_some()) {
        return Ok(report);
    }
    let io = |what: &str, p: &Path, e: std::io::Error| {
        InstallError::Io(format!("cannot {what} {}: {e}", p.display()))
    };
    if old.is_some() {
        let backup = backup_path(path, now_ms);
        std::fs::copy(path, &backup).map_err(|e| io("back up to", &backup, e))?;
        report.pruned = prune_backups(path, &backup, KEEP_BACKUPS);
        report.backup = Some(backup);
    }
    crate::atomic_file::replace(path, &report.text).map_err(|e| io("write", path, e))?;
    report.wrote = true;
    Ok(report)
}

/// Backups of ours kept beside the config file: one per install that
/// changed it, so a user who reinstalls on every upgrade would otherwise
/// collect them forever.
pub const KEEP_BACKUPS: usize = 10;

/// The stamp and same-second number of one of our backups of `name`
/// (`<name>.<YYYYMMDD-HHMMSS>[-<n>].bak`), or `None` for any other file.
/// Compared as bytes, so two config names that are not UTF-8 are never
/// taken for each other.
fn backup_order(name: &OsStr, file: &OsStr) -> Option<(String, u32)> {
    let rest = file
        .as_encoded_bytes()
        .strip_prefix(name.as_encoded_bytes())?
        .strip_prefix(b".")?
        .strip_suffix(b".bak")?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (stamp, n) = match rest.get(15..) {
        Some("") => (rest, 0),
        Some(tail) => (rest.get(..15)?, tail.strip_prefix('-')?.parse().ok()?),
        None => return None,
    };
    let (day, time) = stamp.split_once('-')?;
    let digits = |t: &str, len: usize| t.len() == len && t.bytes().all(|b| b.is_ascii_digit());
    (digits(day, 8) && digits(time, 6)).then(|| (stamp.to_string(), n))
}

/// Removes our backups of `path` beyond the newest `keep`, other than
/// `made` (the backup this install just made, kept whatever its stamp: a
/// clock set back would otherwise sort it oldest and remove it), and
/// returns what it removed. Files of any other name are left alone, and a
/// backup that cannot be removed is skipped: pruning never fails an
/// install.
pub fn prune_backups(path: &Path, made: &Path, keep: usize) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ours: Vec<((String, u32), PathBuf)> = entries
        .flatten()
        .filter(|e| e.path() != made)
        .filter_map(|e| backup_order(name, &e.file_name()).map(|o| (o, e.path())))
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep.saturating_sub(1));
    ours.into_iter()
        .take(excess)
        .filter_map(|(_, p)| std::fs::remove_file(&p).ok().map(|_| p))
        .collect()
}

/// `<file>.<YYYYMMDD-HHMMSS>.bak` beside the file (UTC); a numeric suffix
/// keeps an earlier backup from the same second.
pub fn backup_path(path: &Path, now_ms: i64) -> PathBuf {
    let stamp = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| now_ms.to_string());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Past the highest number this second already has, not into the first
    // free name: pruning may have freed a lower one, and a newer backup
    // there would sort as older (and be the next pruned).
    let highest = path
        .parent()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| backup_order(OsStr::new(&name), &e.file_name()))
        .filter(|(s, _)| *s == stamp)
        .map(|(_, n)| n)
        .max();
    let mut n = match highest {
        None => 0,
        Some(h) => h + 1,
    };
    loop {
        let candidate = if n == 0 {
            path.with_file_name(format!("{name}.{stamp}.bak"))
        } else {
            path.with_file_name(format!("{name}.{stamp}-{n}.bak"))
        };
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// The command for the entry: `--binary`, made absolute, or the running
/// executable.
pub fn resolve_command(binary: Option<&Path>) -> Result<PathBuf, InstallError> {
    let p = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().map_err(|e| {
            InstallError::Io(format!("cannot find the running executable's path: {e}"))
        })?,
    };
    let abs = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()
            .map_err(|e| InstallError::Io(format!("cannot read the current directory: {e}")))?
            .join(p)
    };
    // `.` and `..` are folded by hand, not by `canonicalize`: that would
    // pin a symlinked install (Homebrew's `bin/` link) to the versioned
    // path an upgrade removes, and on Windows write a `\\?\` path other
    // programs may not launch.
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            c => clean.push(c),
        }
    }
    Ok(clean)
}

/// The text `install-claude` prints.
pub fn summary(r: &InstallReport, dry_run: bool) -> String {
    let what = match &r.change {
        Change::Added => "added".to_string(),
        Change::Updated {
            previous_command: Some(p),
        } => format!("updated (command was {p})"),
        Change::Updated {
            previous_command: None,
        } => "updated".to_string(),
        Change::Unchanged => "already up to date".to_string(),
    };
    let mut s = String::new();
    if dry_run {
        s.push_str(&format!(
            "Dry run: {} would be written with mcpServers.{SERVER_KEY} {what} \
             (other servers, kept as they are, and this one's env values not shown):\n\n{}\n",
            r.config_path.display(),
            hide_secrets(&r.text)
        ));
        return s;
    }
    s.push_str(&format!(
        "mcpServers.{SERVER_KEY} {what} in {}\n  command: {}\n",
        r.config_path.display(),
        r.command
    ));
    if let Some(b) = &r.backup {
        s.push_str(&format!("  backup:  {}\n", b.display()));
    }
    if !r.pruned.is_empty() {
        s.push_str(&format!(
            "  removed {} older backup(s), keeping the newest {KEEP_BACKUPS}\n",
            r.pruned.len()
        ));
    }
    s.push_str(
        "Add your provider keys (ANTHROPIC_API_KEY, DEEPSEEK_API_KEY, ...) under its \"env\", then restart Claude Desktop.\n",
    );
    s
}

/// The `install-claude` command. An unparseable config file is an
/// [`ToolError::Invalid`](crate::optimizer::ToolError::Invalid), so the
/// process exits with code 2.
pub fn run_cli(
    config: Option<PathBuf>,
    binary: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let config_path = match config {
        Some(c) => c,
        None => default_config_path().map_err(|e| anyhow::anyhow!(e))?,
    };
    let opts = InstallOptions {
        config_path,
        command: resolve_command(binary.as_deref())?,
        dry_run,
    };
    if !opts.command.is_file() {
        eprintln!(
            "warning: {} does not exist yet; Claude Desktop will fail to start the server until it does",
            opts.command.display()
        );
    }
    let now = crate::optimizer::system_clock()();
    match install(&opts, now) {
        Ok(r) => {
            print!("{}", summary(&r, dry_run));
            Ok(())
        }
        Err(e @ InstallError::Unparseable { .. }) => Err(anyhow::Error::new(
            crate::optimizer::ToolError::Invalid(e.to_string()),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000;

    fn opts(dir: &Path) -> InstallOptions {
        InstallOptions {
            config_path: dir.join("Claude").join("claude_desktop_config.json"),
            command: PathBuf::from("/opt/aico/ai-cost-optimizer"),
            dry_run: false,
        }
    }

    fn read(p: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn default_paths_per_os() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/me".to_string()),
            "APPDATA" => Some(r"C:\Users\me\AppData\Roaming".to_string()),
            _ => None,
        };
        assert_eq!(
            default_config_path_for("macos", &env).unwrap(),
            PathBuf::from("/home/me/Library/Application Support/Claude/claude_desktop_config.json")
        );
        assert_eq!(
            default_config_path_for("linux", &env).unwrap(),
            PathBuf::from("/home/me/.config/Claude/claude_desktop_config.json")
        );
        assert!(
            default_config_path_for("windows", &env)
                .unwrap()
                .ends_with("Claude/claude_desktop_config.json")
        );
        let xdg = |k: &str| (k == "XDG_CONFIG_HOME").then(|| "/x".to_string());
        assert_eq!(
            default_config_path_for("linux", &xdg).unwrap(),
            PathBuf::from("/x/Claude/claude_desktop_config.json")
        );
        assert!(default_config_path_for("windows", &|_| None).is_err());
        // An MSIX install (claude.ai's installer since February 2026) reads
        // its package's copy; two packages are told apart by their config.
        let local = tempfile::tempdir().unwrap();
        let msix_env = |k: &str| match k {
            "APPDATA" => Some(r"C:\Users\me\AppData\Roaming".to_string()),
            "LOCALAPPDATA" => Some(local.path().display().to_string()),
            _ => None,
        };
        assert!(
            default_config_path_for("windows", &msix_env)
                .unwrap()
                .ends_with("Claude/claude_desktop_config.json"),
            "no package: %APPDATA%"
        );
        let roaming = |id: &str| {
            local
                .path()
                .join("Packages")
                .join(id)
                .join("LocalCache")
                .join("Roaming")
                .join("Claude")
        };
        std::fs::create_dir_all(local.path().join("Packages").join("Claude_pzs8sxrjxfjjc"))
            .unwrap();
        std::fs::create_dir_all(
            local
                .path()
                .join("Packages")
                .join("Microsoft.Photos_8wekyb3d8bbwe"),
        )
        .unwrap();
        assert_eq!(
            default_config_path_for("windows", &msix_env).unwrap(),
            roaming("Claude_pzs8sxrjxfjjc").join("claude_desktop_config.json")
        );
        std::fs::create_dir_all(local.path().join("Packages").join("Claude_otherid")).unwrap();
        let e = default_config_path_for("windows", &msix_env).unwrap_err();
        assert!(
            e.contains("several Claude Desktop packages") && e.contains("--config"),
            "{e}"
        );
        std::fs::create_dir_all(roaming("Claude_otherid")).unwrap();
        std::fs::write(
            roaming("Claude_otherid").join("claude_desktop_config.json"),
            "{}",
        )
        .unwrap();
        assert_eq!(
            default_config_path_for("windows", &msix_env).unwrap(),
            roaming("Claude_otherid").join("claude_desktop_config.json")
        );
    }

    #[test]
    fn missing_file_is_created_with_the_entry_and_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let r = install(&o, NOW).unwrap();
        assert_eq!(r.change, Change::Added);
        assert!(r.wrote && r.backup.is_none());
        let v = read(&o.config_path);
        assert_eq!(
            v,
            json!({"mcpServers": {"ai-cost-optimizer": {
                "command": "/opt/aico/ai-cost-optimizer", "args": [], "env": {}}}})
        );
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(o.config_path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn empty_file_counts_as_empty_config_and_is_backed_up() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        std::fs::create_dir_all(o.config_path.parent().unwrap()).unwrap();
        std::fs::write(&o.config_path, "  \n").unwrap();
        let r = install(&o, NOW).unwrap();
        assert_eq!(r.change, Change::Added);
        let b = r.backup.unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "  \n");
        assert!(
            b.to_string_lossy().ends_with(".bak"),
            "backup name {}",
            b.display()
        );
        assert!(read(&o.config_path)["mcpServers"][SERVER_KEY].is_object());
    }

    #[test]
    fn other_servers_and_keys_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        std::fs::create_dir_all(o.config_path.parent().unwrap()).unwrap();
        let before = json!({
            "globalShortcut": "Ctrl+Space",
            "preferences": {"theme": "dark"},
            "mcpServers": {
                "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"], "env": {"X": "1"}}
            }
        });
        std::fs::write(&o.config_path, before.to_string()).unwrap();
        let r = install(&o, NOW).unwrap();
        assert_eq!(r.change, Change::Added);
        let after = read(&o.config_path);
        assert_eq!(after["globalShortcut"], before["globalShortcut"]);
        assert_eq!(after["preferences"], before["preferences"]);
        assert_eq!(
            after["mcpServers"]["filesystem"],
            before["mcpServers"]["filesystem"]
        );
        assert_eq!(
            after["mcpServers"][SERVER_KEY]["command"],
            "/opt/aico/ai-cost-optimizer"
        );
        // The backup holds the old file byte for byte.
        assert_eq!(
            std::fs::read_to_string(r.backup.unwrap()).unwrap(),
            before.to_string()
        );
    }

    #[test]
    fn existing_entry_is_updated_and_keeps_its_env() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        std::fs::create_dir_all(o.config_path.parent().unwrap()).unwrap();
        let before = json!({"mcpServers": {SERVER_KEY: {
            "command": "/old/ai-cost-optimizer", "args": ["serve"],
            "env": {"ANTHROPIC_API_KEY": "sk-ant-keep", "COST_OPTIMIZER_MONTHLY_BUDGET": "50"},
            "disabled": false
        }}});
        std::fs::write(&o.config_path, before.to_string()).unwrap();
        let r = install(&o, NOW).unwrap();
        assert_eq!(
            r.change,
            Change::Updated {
                previous_command: Some("/old/ai-cost-optimizer".into())
            }
        );
        let e = &read(&o.config_path)["mcpServers"][SERVER_KEY];
        assert_eq!(e["command"], "/opt/aico/ai-cost-optimizer");
        assert_eq!(e["args"], json!([]));
        assert_eq!(e["env"], before["mcpServers"][SERVER_KEY]["env"]);
        assert_eq!(e["disabled"], false);

        // Running again changes nothing and makes no second backup.
        let again = install(&o, NOW + 1000).unwrap();
        assert_eq!(again.change, Change::Unchanged);
        assert!(!again.wrote && again.backup.is_none());
    }

    #[test]
    fn malformed_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let parent = o.config_path.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        for bad in [
            "{\"mcpServers\": {",
            "[1, 2]",
            "{\"mcpServers\": []}",
            "// comment\n{}",
        ] {
            std::fs::write(&o.config_path, bad).unwrap();
            let err = install(&o, NOW).unwrap_err();
            assert!(
                matches!(err, InstallError::Unparseable { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("left untouched"));
            assert_eq!(std::fs::read_to_string(&o.config_path).unwrap(), bad);
            assert_eq!(std::fs::read_dir(parent).unwrap().count(), 1, "no backup");
        }
    }

    #[test]
    fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.dry_run = true;
        let r = install(&o, NOW).unwrap();
        assert!(!r.wrote);
        assert!(!o.config_path.exists());
        assert!(r.text.contains("/opt/aico/ai-cost-optimizer"));
        assert!(summary(&r, true).starts_with("Dry run"));
    }

    #[test]
    fn backups_from_the_same_second_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        let b1 = backup_path(&p, NOW);
        assert!(b1.to_string_lossy().ends_with(".bak"));
        std::fs::write(&b1, "x").unwrap();
        let b2 = backup_path(&p, NOW);
        assert_ne!(b1, b2);
    }

    /// Only the newest backups of ours are kept, in stamp order (a
    /// same-second `-1` is newer than its plain stamp); other files stay.
    #[test]
    fn old_backups_are_pruned_to_the_newest_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("claude_desktop_config.json");
        std::fs::write(&p, "{}").unwrap();
        let mut made = Vec::new();
        for i in 0..12 {
            // Two a second: the second one gets the `-1` suffix.
            let b = backup_path(&p, NOW + (i / 2) * 1000);
            std::fs::write(&b, i.to_string()).unwrap();
            made.push(b);
        }
        let others = [
            "claude_desktop_config.json.bak",
            "claude_desktop_config.json.mine.bak",
            "other.json.20200101-000000.bak",
        ];
        for o in others {
            std::fs::write(dir.path().join(o), "keep").unwrap();
        }
        let newest = made.last().unwrap().clone();
        let pruned = prune_backups(&p, &newest, 10);
        assert_eq!(pruned, made[..2].to_vec());
        for b in &made[2..] {
            assert!(b.exists(), "{}", b.display());
        }
        for o in others {
            assert!(dir.path().join(o).exists(), "{o}");
        }
        assert!(prune_backups(&p, &newest, 10).is_empty());
        // A clock set back: the backup just made has the oldest stamp, and
        // is kept; the oldest of the others goes.
        let early = backup_path(&p, NOW - 86_400_000);
        std::fs::write(&early, "new").unwrap();
        let pruned = prune_backups(&p, &early, 10);
        assert_eq!(pruned, vec![made[2].clone()]);
        assert!(early.exists());
        let os = |s: &str| std::ffi::OsString::from(s);
        assert_eq!(
            backup_order(&os("c.json"), &os("c.json.20261206-120000-12.bak")),
            Some(("20261206-120000".into(), 12))
        );
        assert_eq!(
            backup_order(&os("c.json"), &os("c.json.2026-12-06.bak")),
            None
        );
    }

    /// Many installs within one second, pruned as they go (as reinstalls
    /// do): the ten kept are the ten newest. A pruned low number was
    /// reused for a newer backup, which then sorted as the oldest.
    #[test]
    fn many_backups_in_one_second_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("claude_desktop_config.json");
        let mut made = Vec::new();
        for i in 0..14 {
            let b = backup_path(&p, NOW);
            std::fs::write(&b, i.to_string()).unwrap();
            prune_backups(&p, &b, 10);
            made.push(b);
        }
        let kept: Vec<String> = made
            .iter()
            .filter(|b| b.exists())
            .map(|b| std::fs::read_to_string(b).unwrap())
            .collect();
        let want: Vec<String> = (4..14).map(|i: i32| i.to_string()).collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn resolve_command_makes_paths_absolute() {
        let p = resolve_command(Some(Path::new("./some/relative/bin"))).unwrap();
        assert!(p.is_absolute());
        assert!(p.ends_with("some/relative/bin"));
        assert!(!p.to_string_lossy().contains("/./"), "{}", p.display());
        assert!(resolve_command(None).unwrap().is_absolute());
        // `..` folded; a symlink kept as the link (an upgrade moves its
        // target).
        let p = resolve_command(Some(Path::new("/opt/tool/../bin/./aco"))).unwrap();
        assert_eq!(p, Path::new("/opt/bin/aco"));
        #[cfg(unix)]
        {
            let dir = tempfile::tempdir().unwrap();
            let real = dir.path().join("Cellar-1.2.3-aco");
            std::fs::write(&real, "").unwrap();
            let link = dir.path().join("aco");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert_eq!(resolve_command(Some(&link)).unwrap(), link);
        }
    }
}
