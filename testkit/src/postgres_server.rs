//! A PostgreSQL cluster of a test's own, that the test can stop and start.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
};

/// A PostgreSQL cluster of the test's own, from the installed server
/// binaries, that the test can stop and start. As root, it runs as the
/// `postgres` user (the server refuses to run as root).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the server with these files copied into its data folder
    /// (owned by the server's user, mode 0600) and these extra settings
    /// (`-c name=value`), e.g. a certificate, its key and `ssl=on`.
    pub fn start_with_files(files: &[(&str, &[u8])], settings: &[&str]) -> Self {
        let pg = Self::init();
        for (name, bytes) in files {
            let path = pg.dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                assert!(Command::new("chown")
                    .arg("postgres")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success());
            }
        }
        pg.launch_with(settings);
        pg
    }

    fn start_with(settings: &[&str]) -> Self {
        let pg = Self::init();
        pg.launch_with(settings);
        pg
    }

    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).max())
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/services.sh installs them)");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("fs-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self { port, dir, bin };
        if is_root() {
            assert!(
                Command::new("chown")
                    .arg("postgres")
                    .arg(&pg.dir)
                    .status()
                    .unwrap()
                    .success(),
                "chown to postgres"
            );
        }
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg
    }

    fn data(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let status = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new(&exe).args(args).stdout(Stdio::null()).status()
        }
        .unwrap();
        assert!(status.success(), "{tool} {args:?} failed");
    }

    pub fn launch(&self) {
        self.launch_with(&[]);
    }

    fn launch_with(&self, settings: &[&str]) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data()
        );
        for setting in settings {
            opts.push_str(" -c ");
            opts.push_str(setting);
        }
        let log = format!("{}/log", self.data());
        self.run(
            "pg_ctl",
            &["-D", self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", self.data(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        } else {
            Command::new(&exe)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(unsafe_code, reason = "libc::geteuid has no safe wrapper in std")]
fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
