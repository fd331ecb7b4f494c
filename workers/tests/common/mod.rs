//! The workspace's one test harness (`testkit/`), and the workers' binary,
//! which only this crate's tests can name.

#![allow(dead_code, reason = "each test crate uses part of the harness")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use flashsale_testkit::*;

/// The workers' API in these tests: the same harness as the API's tests.
pub type Api = TestApp;

/// The real `flashsale-workers` binary against the given stores, killed
/// when dropped.
pub struct Workers {
    pub child: Child,
}

impl Workers {
    pub fn start(redis_url: &str, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale-workers"));
        cmd.env("REDIS_URL", redis_url)
            .env("DATABASE_URL", database_url)
            .env("WORKERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("start flashsale-workers"),
        }
    }

    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    #[allow(unsafe_code, reason = "std can only SIGKILL a child")]
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("workers did not exit within ten seconds of SIGTERM");
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
