//! The accept loop: plain HTTP or TLS, with every connection owned by the loop's task so that
//! stopping the server really closes everything (clients then see refused/reset connections).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A self-signed certificate for `localhost` and `127.0.0.1`.
pub struct TestCert {
    /// PEM of the certificate; trust it as a CA (it is self-signed).
    pub cert_pem: String,
    /// Client certificate and key (PEM) the server requires, in mutual-TLS mode.
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    pub(crate) acceptor: TlsAcceptor,
}

impl TestCert {
    pub fn generate() -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certified =
            rcgen::generate_simple_self_signed(names).expect("generating a test certificate");
        let cert_der = certified.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .expect("TLS server config");
        TestCert {
            cert_pem: certified.cert.pem(),
            client_cert_pem: None,
            client_key_pem: None,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// A test CA, a server certificate for `localhost`/`127.0.0.1` and a client certificate,
    /// both signed by the CA; the server requires a client certificate from that CA.
    /// `cert_pem` is the CA certificate.
    pub fn generate_mtls() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server_cert =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params")
                .signed_by(&server_key, &ca)
                .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec!["ferry-client".to_owned()]).expect("client params");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("CA into root store");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone(), ca.der().clone()], key_der)
            .expect("TLS server config");
        TestCert {
            cert_pem: ca.pem(),
            client_cert_pem: Some(client_cert.pem()),
            client_key_pem: Some(client_key.serialize_pem()),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

/// Bind `addr` (port 0 for any).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve `app` on `listener` until the returned task is aborted; aborting it drops the listener
/// and every open connection.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(app.clone());
                    let tls = tls.clone();
                    connections.spawn(async move {
                        let builder = Builder::new(TokioExecutor::new());
                        match tls {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    let _ = builder
                                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}
