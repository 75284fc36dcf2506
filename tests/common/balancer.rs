//! A TCP load balancer in front of replicas: Debian's HAProxy in TCP mode (TLS passes through, as a
//! cloud L4 balancer in front of Rancher HA), round robin, with health checks that drop a dead
//! replica within a second. Killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Balancer {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// Starts HAProxy on a free loopback port in front of `backends`.
    pub fn start(backends: &[SocketAddr]) -> Self {
        Self::start_on(free_port(), backends)
    }

    /// Starts HAProxy on loopback port `port` in front of `backends`.
    pub fn start_on(port: u16, backends: &[SocketAddr]) -> Self {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("  server r{i} {addr} check\n"))
            .collect();
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
             frontend corral\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  default-server inter 300ms fall 1 rise 2\n{servers}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
