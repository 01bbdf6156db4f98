//! `install-claude` through the real binary: the default command is the
//! running executable, other servers survive, and a malformed config is
//! refused with exit code 2 and left untouched.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ai-cost-optimizer"))
        .arg("install-claude")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("APPDATA", home.join("AppData"))
        .env("COST_OPTIMIZER_DATA_DIR", home.join("data"))
        .env("COST_OPTIMIZER_CONFIG", "")
        .output()
        .unwrap()
}

#[test]
fn adds_the_running_binary_and_keeps_other_servers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("claude_desktop_config.json");
    std::fs::write(
        &cfg,
        json!({"mcpServers": {"other": {"command": "x"}}, "theme": "dark"}).to_string(),
    )
    .unwrap();
    let out = run(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_ai-cost-optimizer")).unwrap();
    assert_eq!(
        v["mcpServers"]["ai-cost-optimizer"]["command"],
        json!(exe.to_str().unwrap())
    );
    assert_eq!(v["mcpServers"]["other"], json!({"command": "x"}));
    assert_eq!(v["theme"], "dark");
    let backups = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".bak")
        })
        .count();
    assert_eq!(backups, 1);
}

#[test]
fn default_path_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["--dry-run", "--binary", "/opt/aico/ai-cost-optimizer"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Claude"), "{text}");
    assert!(text.contains("/opt/aico/ai-cost-optimizer"), "{text}");
    assert!(!dir.path().join(".config").exists() && !dir.path().join("Library").exists());
}

#[test]
fn malformed_config_exits_2_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("claude_desktop_config.json");
    std::fs::write(&cfg, "{\"mcpServers\": {").unwrap();
    let out = run(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left untouched"), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "{\"mcpServers\": {");
    let backups = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".bak")
        })
        .count();
    assert_eq!(backups, 0, "no backup of a file that was not changed");
}

/// A config file kept as a symlink (dotfile managers) stays a symlink: the
/// file it points to is the one edited.
#[cfg(unix)]
#[test]
fn a_symlinked_config_is_edited_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("dotfiles").join("claude.json");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(
        &real,
        json!({"mcpServers": {"other": {"command": "x"}}}).to_string(),
    )
    .unwrap();
    let link = dir.path().join("claude_desktop_config.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run(dir.path(), &["--config", link.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced by a file"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
    assert!(
        v["mcpServers"]["ai-cost-optimizer"]["command"].is_string(),
        "{v}"
    );
    assert_eq!(v["mcpServers"]["other"], json!({"command": "x"}));
}

/// A dry run's output ends up in bug reports and CI logs: the keys of this
/// server and of every other one are not in it. And install-claude reads
/// none of our settings, so a broken one (the thing a user may be
/// reinstalling to fix) does not stop it.
#[test]
fn a_dry_run_hides_keys_and_ignores_broken_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("claude_desktop_config.json");
    std::fs::write(
        &cfg,
        json!({"mcpServers": {
            "github": {"command": "gh-mcp", "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_secretsecret"}},
            "remote": {"url": "https://x.example/mcp", "headers": {"Authorization": "Bearer tok_hidden1"}},
            "ai-cost-optimizer": {"command": "/old/path", "env": {"ANTHROPIC_API_KEY": "sk-ant-secret2", "EMPTY": ""}}
        }})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ai-cost-optimizer"))
        .args([
            "install-claude",
            "--dry-run",
            "--binary",
            "/opt/aico/ai-cost-optimizer",
        ])
        .args(["--config", cfg.to_str().unwrap()])
        .env_clear()
        .env("HOME", dir.path())
        .env("COST_OPTIMIZER_DATA_DIR", dir.path().join("data"))
        .env("COST_OPTIMIZER_MONTHLY_BUDGET", "abc")
        .env("COST_OPTIMIZER_CONFIG", dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["ghp_secretsecret", "tok_hidden1", "sk-ant-secret2"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    // Other servers are kept, and not shown (tokens hide in their args
    // and URLs too); this one's keys are hidden.
    assert!(
        text.contains("\"github\": \"(kept as it is; not shown)\""),
        "{text}"
    );
    assert!(!text.contains("https://x.example/mcp"), "{text}");
    assert!(
        text.contains("\"ANTHROPIC_API_KEY\": \"(hidden)\""),
        "{text}"
    );
    assert!(text.contains("\"EMPTY\": \"\""), "{text}");
    assert!(text.contains("/opt/aico/ai-cost-optimizer"), "{text}");
    // Nothing written.
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("/old/path"));
}

/// Reinstalling on every upgrade leaves at most ten backups: each install
/// that changes the file makes one and removes the oldest past ten.
#[test]
fn reinstalls_keep_the_newest_ten_backups() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("claude_desktop_config.json");
    std::fs::write(&cfg, json!({"mcpServers": {}}).to_string()).unwrap();
    let backups = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bak"))
            .count()
    };
    for i in 0..12 {
        // A new binary path each time, as after an upgrade: the file changes.
        let bin = format!("/opt/aico-{i}/ai-cost-optimizer");
        let out = run(
            dir.path(),
            &["--config", cfg.to_str().unwrap(), "--binary", &bin],
        );
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(backups(), (i + 1).min(10), "{said}");
        assert_eq!(said.contains("removed 1 older backup"), i >= 10, "{said}");
    }
    // The file holds the last install.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(
        v["mcpServers"]["ai-cost-optimizer"]["command"],
        "/opt/aico-11/ai-cost-optimizer"
    );
}

/// A config file its owner made read-only is not replaced, though the
/// directory would let a rename through (as root, run as `nobody`: root
/// writes anything).
#[cfg(unix)]
#[test]
fn a_read_only_config_is_refused_untouched() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = dir.path().join("claude_desktop_config.json");
    std::fs::write(&cfg, "{}").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ai-cost-optimizer"));
    cmd.arg("install-claude")
        .args(["--config", cfg.to_str().unwrap()])
        .env_clear()
        .env("HOME", dir.path())
        .env("COST_OPTIMIZER_DATA_DIR", dir.path().join("data"))
        .env("COST_OPTIMIZER_CONFIG", "");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not writable"), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "{}");
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o444
    );
}
