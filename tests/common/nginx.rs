//! nginx (Debian's, installed by `.ci/deps`) on a free loopback port, terminating TLS with a given
//! certificate: as an ingress in front of corral's plain port, or as the plain TLS server a load
//! test compares corral with. Killed when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx proxying to `backend` (corral's plain port, WebSockets included), as an ingress does.
    pub fn proxying(backend: SocketAddr, cert_pem: &str, key_pem: &str) -> Nginx {
        Nginx::start(
            cert_pem,
            key_pem,
            &format!(
                "proxy_pass http://{backend};
      proxy_http_version 1.1;
      proxy_set_header Host $host:$server_port;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 900s;
      proxy_buffering off;"
            ),
        )
    }

    /// nginx answering every request with `200 ok`.
    pub fn answering(cert_pem: &str, key_pem: &str) -> Nginx {
        Nginx::start(cert_pem, key_pem, "return 200 \"ok\";")
    }

    fn start(cert_pem: &str, key_pem: &str, location: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(path("cert.pem"), cert_pem).unwrap();
        std::fs::write(path("key.pem"), key_pem).unwrap();
        let config = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    location / {{
      {location}
    }}
  }}
}}
"#,
            dir = dir.path().display()
        );
        std::fs::write(path("nginx.conf"), config).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &path(""), "-c", &path("nginx.conf")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (.ci/test installs it)");
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(nginx.addr()).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
