//! Reading what a process of the service (`flashsale serve`,
//! `flashsale-workers`) logs, for tests of what it says at start.

use std::{
    io::{BufRead, BufReader},
    process::Child,
    sync::mpsc,
    time::{Duration, Instant},
};

/// The lines `child` writes to its standard output (which must be piped) up
/// to and including the first that contains `until`. Panics, with the lines
/// read so far, when none does within `within`.
pub fn lines_until(child: &mut Child, until: &str, within: Duration) -> Vec<String> {
    let out = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(until);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with `{until}` within {within:?}; read: {lines:#?}");
}
