//! moto's S3 server for the distributed cache tests: installed by scripts/install-moto.sh
//! (run by scripts/setup.sh), started once per test binary on a free 127.0.0.1 port under a
//! small Python parent that kills it when the test process exits (its stdin closes).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Moto {
    port: u16,
    _child: Child,
}

/// The python with moto: FERRY_MOTO_PYTHON, else scripts/install-moto.sh's virtualenv, else
/// python3 from PATH.
pub fn moto_python() -> String {
    if let Ok(p) = std::env::var("FERRY_MOTO_PYTHON") {
        return p;
    }
    let tools = std::env::var("FERRY_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ferry-tools",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let venv = format!("{tools}/moto-venv/bin/python");
    if Path::new(&venv).is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// The port of this test binary's moto server (started on first use). Panics with what to
/// install when it cannot start: these tests never pass without a server.
pub fn port() -> u16 {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let script = "import subprocess, sys\n\
             p = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', sys.argv[1]],\n\
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
             sys.stdin.read()\n\
             p.kill()\n";
        let python = moto_python();
        let child = Command::new(&python)
            .args(["-c", script, &port.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {python} for moto's S3 server ({e}); run scripts/install-moto.sh")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http(port, "GET", "/", &[]).is_ok_and(|(code, _)| code == 200) {
            assert!(
                Instant::now() < deadline,
                "moto's S3 server did not start on 127.0.0.1:{port} within 30 s; install it with \
                 scripts/install-moto.sh (scripts/setup.sh runs it) or set FERRY_MOTO_PYTHON"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            port,
            _child: child,
        }
    })
    .port
}

/// A plain HTTP/1.1 request to moto (which does not check signatures): status and body.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let code = String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok((code, body))
}

/// Creates `name` on the server.
pub fn create_bucket(name: &str) {
    let (code, body) = http(port(), "PUT", &format!("/{name}"), &[]).expect("moto");
    assert_eq!(
        code,
        200,
        "creating bucket {name}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// The object names in a bucket (ListObjectsV2).
pub fn objects(bucket: &str) -> Vec<String> {
    let (code, body) = http(port(), "GET", &format!("/{bucket}?list-type=2"), &[]).expect("moto");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body)
        .split("<Key>")
        .skip(1)
        .filter_map(|p| p.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// A second moto server speaking HTTPS with a fresh self-signed certificate for 127.0.0.1
/// (written to `dir/cert.pem`, which a client must trust, e.g. through `SSL_CERT_FILE`), with
/// `bucket` created. Returns its port; the server lives as long as the returned child guard.
pub fn start_tls(dir: &Path, bucket: &str) -> (u16, Child) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("generating a test certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key.pem");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // Started, then the bucket created over TLS (checking the certificate), by one script.
    let script = "import subprocess, sys, ssl, time, urllib.request\n\
         port, cert, key, bucket = sys.argv[1:5]\n\
         p = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', port,\n\
             '-c', cert, '-k', key], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         ctx = ssl.create_default_context(cafile=cert)\n\
         for _ in range(300):\n\
         \x20   try:\n\
         \x20       urllib.request.urlopen(urllib.request.Request(f'https://127.0.0.1:{port}/{bucket}', method='PUT'), context=ctx)\n\
         \x20       break\n\
         \x20   except Exception:\n\
         \x20       time.sleep(0.1)\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n\
         p.kill()\n";
    let python = moto_python();
    let mut child = Command::new(&python)
        .args(["-c", script, &port.to_string()])
        .arg(&cert)
        .arg(&key)
        .arg(bucket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {python} for moto ({e}); run scripts/install-moto.sh")
        });
    let mut line = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    assert_eq!(line, "ready", "moto over HTTPS did not start");
    (port, child)
}
