//! A private `redis-server` for one test, so that it may stop and start it
//! without disturbing the shared one (`scripts/services.sh` installs it).

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    /// The certificates' directory when it serves TLS only.
    tls: Option<String>,
}

impl PrivateRedis {
    /// Starts one on a free port, without persistence.
    pub fn start() -> Self {
        let port = super::free_port();
        Self {
            child: Some(spawn(port, None)),
            port,
            tls: None,
        }
    }

    /// Starts one that speaks TLS only, with the certificate of
    /// `scripts/test-certs.sh` (the test command exports its directory as
    /// `TEST_TLS_CERTS`).
    pub fn start_tls() -> Self {
        let port = super::free_port();
        let certs = tls_certs();
        Self {
            child: Some(spawn(port, Some(&certs))),
            port,
            tls: Some(certs),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills it (as an outage would: no shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port, self.tls.as_deref()));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of `scripts/test-certs.sh`: `ca.pem`, `server.pem`,
/// `server.key` and `other-ca.pem`.
pub fn tls_certs() -> String {
    std::env::var("TEST_TLS_CERTS").unwrap_or_else(|_| {
        panic!("TEST_TLS_CERTS is not set: run scripts/test-certs.sh (the test command does)")
    })
}

fn spawn(port: u16, tls: Option<&str>) -> Child {
    let mut cmd = Command::new("redis-server");
    match tls {
        None => cmd.args(["--port", &port.to_string()]),
        Some(certs) => cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &format!("{certs}/server.pem")])
            .args(["--tls-key-file", &format!("{certs}/server.key")])
            .args(["--tls-ca-cert-file", &format!("{certs}/ca.pem")])
            .args(["--tls-auth-clients", "no"]),
    };
    let child = cmd
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/services.sh installs it)");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}
