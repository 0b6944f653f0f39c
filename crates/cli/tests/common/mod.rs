//! Helpers for tests that run the real `tessera` binary and mount volumes
//! through the kernel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

pub fn tessera(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run tessera")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A formatted volume in a temporary directory: SQLite metadata, a local
/// directory as object store.
pub struct Volume {
    pub dir: tempfile::TempDir,
    pub meta_url: String,
    pub storage: String,
}

impl Volume {
    pub fn new(name: &str) -> Volume {
        Self::with_storage(name, None, &[])
    }

    pub fn with_storage(name: &str, storage: Option<&str>, extra: &[&str]) -> Volume {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta_url = format!("sqlite://{}/meta.db", dir.path().display());
        let storage = storage
            .map(str::to_string)
            .unwrap_or_else(|| format!("file://{}/objects", dir.path().display()));
        let mut args = vec!["format", &meta_url, name, "--storage", &storage];
        args.extend_from_slice(extra);
        let out = tessera(&args);
        assert!(out.status.success(), "format failed: {}", stderr(&out));
        Volume {
            dir,
            meta_url,
            storage,
        }
    }

    pub fn mount(&self, name: &str) -> Mount {
        self.mount_with(name, &[])
    }

    /// Mount with extra options. Unless they say otherwise, the mount gets
    /// its own disk cache under the volume's directory, no metrics port, and
    /// a free-space floor of 1 %: the default 10 % is about the host's disk,
    /// and on a nearly full CI disk it would stop caching mid-test (seen:
    /// a warm-up left 8 % of a tree uncached with 11 % of the disk free).
    pub fn mount_with(&self, name: &str, extra: &[&str]) -> Mount {
        let mountpoint = self.dir.path().join(name);
        std::fs::create_dir_all(&mountpoint).expect("mkdir mountpoint");
        let cache = self.cache_dir(name);
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--cache-dir") {
            args.extend(["--cache-dir", cache.to_str().expect("utf-8 path")]);
        }
        if !extra.contains(&"--free-space-ratio") {
            args.extend(["--free-space-ratio", "0.01"]);
        }
        if !extra.contains(&"--metrics") {
            args.extend(["--metrics", "none"]);
        }
        Mount::start(&self.meta_url, &mountpoint, &args)
    }

    /// The volume's UUID (what its cache directories are named after), as
    /// `tessera status` shows it.
    pub fn uuid(&self) -> String {
        let out = tessera(&["status", &self.meta_url]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("uuid").map(|u| u.trim().to_string()))
            .expect("status shows the uuid")
    }

    /// The default disk cache directory of mount `name`.
    pub fn cache_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("cache-{name}"))
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// A foreground `tessera mount` child; unmounted and reaped on drop.
pub struct Mount {
    pub path: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start(meta_url: &str, mountpoint: &Path, extra: &[&str]) -> Mount {
        Self::start_with_stderr(meta_url, mountpoint, extra, Stdio::inherit(), &[])
    }

    /// Like [`Mount::start`], with extra environment variables.
    pub fn start_env(
        meta_url: &str,
        mountpoint: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        Self::start_with_stderr(meta_url, mountpoint, extra, Stdio::inherit(), env)
    }

    /// Like [`Mount::start`], with the mount's log written to `log`.
    pub fn start_logged(meta_url: &str, mountpoint: &Path, extra: &[&str], log: &Path) -> Mount {
        let file = std::fs::File::create(log).expect("create mount log");
        Self::start_with_stderr(meta_url, mountpoint, extra, Stdio::from(file), &[])
    }

    fn start_with_stderr(
        meta_url: &str,
        mountpoint: &Path,
        extra: &[&str],
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Mount {
        let path = mountpoint.canonicalize().expect("canonical mountpoint");
        // A mount given no cache directory gets one beside its mountpoint,
        // in the test's own temporary directory: the default
        // (/var/cache/tessera) is outside it.
        let own_cache = path.with_extension("cache");
        let mut args: Vec<&std::ffi::OsStr> = extra.iter().map(|a| a.as_ref()).collect();
        if !extra.iter().any(|a| a.starts_with("--cache-dir")) {
            args.extend(["--cache-dir".as_ref(), own_cache.as_os_str()]);
        }
        let mut child = Command::new(bin())
            .arg("mount")
            .arg(meta_url)
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn mount");
        let start = Instant::now();
        while !is_mounted(&path) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mount exited early with {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            path,
            child: Some(child),
        }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kill the mount process with SIGKILL (no cleanup of any kind), reap
    /// it, and detach the dead mount from the mountpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the mount");
            let _ = child.wait();
        }
        let _ = tessera(&["umount", "--force", &self.path.to_string_lossy()]);
    }

    /// Unmount and wait for the mount process to exit cleanly.
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let out = tessera(&["umount", &self.path.to_string_lossy()]);
        if !out.status.success() {
            let _ = tessera(&["umount", "--force", &self.path.to_string_lossy()]);
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(
                    status.success() || std::thread::panicking(),
                    "mount exited with {status}"
                );
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so checksums are stable.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 64-bit FNV-1a digest, enough to compare file contents.
pub fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// One metric from the mount's `.stats` file (0 when absent).
pub fn stat(mnt: &Path, name: &str) -> f64 {
    metric(
        &std::fs::read_to_string(mnt.join(".stats")).expect("read .stats"),
        name,
    )
}

/// One metric from Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Poll `cond` every 50 ms until it holds; fail after 30 s naming `what`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The data length of a block from its object or cache file name, whose
/// key ends in `{slice}_{index}_{length}`.
pub fn block_len_of(path: &Path) -> u64 {
    path.to_string_lossy()
        .rsplit('_')
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no block length in {}", path.display()))
}

/// `tessera fsck` of the volume finds nothing wrong (`when` names the
/// moment, for the failure message).
pub fn assert_fsck_clean(meta_url: &str, when: &str) {
    let out = tessera(&["fsck", meta_url]);
    assert!(
        out.status.success(),
        "fsck {when}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// Write `total` bytes to a new file in 1 MiB writes until one fails;
/// returns the bytes written and the errno that stopped it (0: none).
pub fn write_until_refused(path: &Path, total: usize) -> (usize, i32) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    let block = vec![7u8; 1 << 20];
    let mut written = 0;
    while written < total {
        match f.write(&block) {
            Ok(n) => written += n,
            Err(e) => return (written, e.raw_os_error().unwrap_or(-1)),
        }
    }
    match f.sync_all() {
        Ok(()) => (written, 0),
        Err(e) => (written, e.raw_os_error().unwrap_or(-1)),
    }
}

/// The size `df` shows for the file system at `path`, in bytes.
pub fn df_size(path: &Path) -> u64 {
    df_field(path, "size")
}

/// A field of `df -B1` (size, used, avail) for `path`, in bytes.
pub fn df_field(path: &Path, field: &str) -> u64 {
    let out = Command::new("df")
        .args(["-B1", &format!("--output={field}")])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df {}: {}", path.display(), stderr(&out)))
}

/// The Python that has the `safetensors` and `numpy` packages: the test
/// command's venv (TESSERA_TEST_PYTHON), else the system's if it has them.
pub fn loader_python() -> Option<String> {
    let works = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import safetensors, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(py) = std::env::var("TESSERA_TEST_PYTHON") {
        // The test command's own: it must work, not be skipped.
        assert!(
            works(&py),
            "TESSERA_TEST_PYTHON={py} cannot import safetensors and numpy"
        );
        return Some(py);
    }
    works("python3").then(|| "python3".to_string())
}

/// The model-loader script the loader tests run with [`loader_python`].
pub const LOADER_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/loaders/safetensors_check.py"
);

/// Run `cmd`; its standard output, or a failure with everything it said.
pub fn output_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
