//! The real `voxmachina serve` binary as a child process (`tests/restart.rs`,
//! `tests/cluster.rs`): started with the test secrets, `$NOTIFY_SOCKET` on a datagram socket of
//! the test (READY=1 gives the bound address), stderr JSON log lines collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use voxmachina_emulator::{CallView, Emulator};

use super::harness::{ADMIN_TOKEN, API_KEY, webhook_secret};

/// One `voxmachina serve` child with its notify socket and captured stderr; killed (and reaped)
/// on drop.
pub struct Controller {
    /// The child process.
    pub child: Child,
    /// The address it listens on (from its READY=1 status line).
    pub addr: SocketAddr,
    /// Its stderr (JSON log) lines so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// sd_notify datagrams so far, with the time each arrived.
    pub notes: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Controller {
    /// Starts `voxmachina serve --config <config>` with the test secrets in the environment and
    /// `$NOTIFY_SOCKET` pointing at a datagram socket of the test; returns once READY=1 arrived.
    pub fn start(config: &Path, tag: &str, extra_env: &[(&str, &str)]) -> Controller {
        let dir = config.parent().unwrap();
        let socket_path = dir.join(format!("notify-{tag}.sock"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (notes, stop) = (notes.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        notes.lock().unwrap().push((Instant::now(), msg));
                    }
                }
            });
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("VOXMACHINA_CONFIG")
            .env_remove("AWS_PROFILE")
            .env("NOTIFY_SOCKET", &socket_path)
            .env("OPENAI_API_KEY", API_KEY)
            .env("OPENAI_WEBHOOK_SECRET", webhook_secret())
            .env("VOXMACHINA_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("VOXMACHINA_") && k.contains("__") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("voxmachina serve starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        {
            let logs = logs.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut c = Controller {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            logs,
            notes,
            stop,
        };
        let ready = c.wait_note(Duration::from_secs(60), |m| {
            m.lines().any(|l| l == "READY=1")
        });
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .expect("READY=1 comes with a STATUS= line")
            .to_string();
        let addr = status
            .strip_prefix("listening on ")
            .and_then(|s| s.split(';').next())
            .unwrap_or_else(|| panic!("status names the address: {status:?}"));
        c.addr = addr.parse().unwrap();
        c
    }

    /// Waits for a notify message (datagram) matching `pred`; returns it. Panics on timeout or
    /// if the process exits first.
    pub fn wait_note(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, m)) = self.notes.lock().unwrap().iter().find(|(_, m)| pred(m)) {
                return m.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("controller exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no matching notify message; got {:?}\nlogs:\n{}",
                self.notes(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Log lines of this process that carry `call_id` in their span.
    pub fn call_lines(&self, call_id: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&format!("\"call_id\":\"{call_id}\"")))
            .cloned()
            .collect()
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/openai/webhook", self.addr)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "controller still running after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /v1/calls/{call_id}` (admin API) as JSON, `None` on 404.
    pub async fn admin_call(&self, call_id: &str) -> Option<Value> {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/v1/calls/{call_id}", self.addr))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if resp.status() == 404 {
            return None;
        }
        assert_eq!(resp.status(), 200);
        Some(resp.json().await.unwrap())
    }
}

/// Waits until the emulator's view of `call_id` satisfies `pred`; panics with `what` after
/// `timeout`.
pub async fn wait_view(
    emulator: &Emulator,
    call_id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&CallView) -> bool,
) -> CallView {
    match emulator.wait_for(call_id, timeout, pred).await {
        Some(v) => v,
        None => panic!(
            "emulator: {what} did not happen within {timeout:?}; call: {:#?}",
            emulator.call(call_id)
        ),
    }
}
