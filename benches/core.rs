//! Micro-benchmarks of the hot paths: minting a leaf, the certificate lookup a handshake does (alone
//! and under contention), the tunnel codec, and the CA checksum.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use corral::certs::CertService;
use corral::config::{Config, ServeArgs};
use corral::pki::{CaProfile, CertificateAuthority, LeafFactory, SubjectName, ca_checksum};
use corral::store::{DataDir, FileBackend};
use corral::tunnel::codec::{Message, MessageType};
use criterion::{Criterion, criterion_group, criterion_main};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    config: Config,
    ca: Arc<CertificateAuthority>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::open(tmp.path()).unwrap();
    let config = Config::resolve(ServeArgs {
        data_dir: Some(tmp.path().into()),
        mint_rate: Some(0),
        mint_rate_per_client: Some(0),
        max_names: Some(10_000_000),
        ..ServeArgs::default()
    })
    .unwrap();
    let (ca, _) = CertificateAuthority::load_or_create(&dir, CaProfile::Cattle).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        config,
        ca: Arc::new(ca),
    }
}

/// No lab fault: the handshake path as users run it.
fn no_faults(f: &Fixture) -> Arc<corral::lab::Faults> {
    Arc::new(corral::lab::Faults::new(Arc::new(FileBackend::new(
        f.dir.clone(),
    ))))
}

fn minting(c: &mut Criterion) {
    let f = fixture();
    let factory = LeafFactory::new(&FileBackend::new(f.dir.clone()), f.ca.clone(), 365).unwrap();
    let name = [SubjectName::parse("bench.lab.test").unwrap()];
    c.bench_function("mint a leaf (sign only)", |b| {
        b.iter(|| black_box(factory.mint(&name).unwrap()))
    });

    let resolver = CertService::new(
        &f.config,
        Arc::new(FileBackend::new(f.dir.clone())),
        &f.dir,
        LeafFactory::new(&FileBackend::new(f.dir.clone()), f.ca.clone(), 365).unwrap(),
        no_faults(&f),
    )
    .unwrap();
    let local: IpAddr = [127, 0, 0, 1].into();
    let mut n = 0u64;
    c.bench_function("first contact: mint + server config", |b| {
        b.iter(|| {
            n += 1;
            black_box(resolver.choose(Some(&format!("n{n}.lab.test")), local, local))
        })
    });
}

fn lookup(c: &mut Criterion) {
    let f = fixture();
    let resolver = Arc::new(
        CertService::new(
            &f.config,
            Arc::new(FileBackend::new(f.dir.clone())),
            &f.dir,
            LeafFactory::new(&FileBackend::new(f.dir.clone()), f.ca.clone(), 365).unwrap(),
            no_faults(&f),
        )
        .unwrap(),
    );
    let local: IpAddr = [127, 0, 0, 1].into();
    for i in 0..1000 {
        resolver.choose(Some(&format!("n{i}.lab.test")), local, local);
    }
    c.bench_function("cached lookup", |b| {
        b.iter(|| black_box(resolver.select(Some("n500.lab.test"), local, local)))
    });

    // The same lookup while three other threads hammer the cache.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..3)
        .map(|t| {
            let (resolver, stop) = (resolver.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    black_box(resolver.select(
                        Some(&format!("n{}.lab.test", i % 1000)),
                        local,
                        local,
                    ));
                    i += 7;
                }
            })
        })
        .collect();
    c.bench_function("cached lookup under contention", |b| {
        b.iter(|| black_box(resolver.select(Some("n500.lab.test"), local, local)))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hammers {
        h.join().unwrap();
    }
}

fn codec(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 32 * 1024]);
    let message = Message::new(123_456, 42, MessageType::Data, payload);
    let encoded = message.encode();
    c.bench_function("encode a 32 KiB Data message", |b| {
        b.iter(|| black_box(message.encode()))
    });
    c.bench_function("decode a 32 KiB Data message", |b| {
        b.iter(|| black_box(Message::decode(encoded.clone()).unwrap()))
    });
}

fn checksum(c: &mut Criterion) {
    let f = fixture();
    let pem = f.ca.cacerts().to_string();
    c.bench_function("CA checksum", |b| b.iter(|| black_box(ca_checksum(&pem))));
}

/// One MiB through a pipe in 16 KiB writes, read at the other end: as a tunnel's socket carries it.
async fn one_mib<W>(writer: &mut W, reader: &mut tokio::io::DuplexStream)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chunk = [7u8; 16 * 1024];
    let mut sink = vec![0u8; 16 * 1024];
    for _ in 0..64 {
        writer.write_all(&chunk).await.unwrap();
        reader.read_exact(&mut sink).await.unwrap();
    }
    writer.flush().await.unwrap();
}

/// What the lab's toxics cost a tunnel that has none: the bare pipe, the pipe through `ToxicIo`
/// with no fault, and with a fault active for another cluster (each read and write then looks
/// through the active faults).
fn toxics(c: &mut Criterion) {
    use corral::lab::{FaultSpec, Faults, ToxicIo};
    let f = fixture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let faults = Arc::new(Faults::new(Arc::new(FileBackend::new(f.dir.clone()))));
    let (mut bare, mut bare_peer) = tokio::io::duplex(1 << 20);
    c.bench_function("1 MiB through a bare pipe", |b| {
        b.iter(|| rt.block_on(one_mib(&mut bare, &mut bare_peer)))
    });
    let (pipe, mut peer) = tokio::io::duplex(1 << 20);
    let mut toxic =
        rt.block_on(async { ToxicIo::new(pipe, faults.clone(), "c-bench".into(), None) });
    c.bench_function("1 MiB through ToxicIo, no fault", |b| {
        b.iter(|| rt.block_on(one_mib(&mut toxic, &mut peer)))
    });
    let elsewhere = serde_json::json!({"kind": "tunnel", "toxic": "latency", "cluster": "c-other",
        "latency": "1s"});
    faults
        .add(FaultSpec::parse(elsewhere.as_object().unwrap()).unwrap())
        .unwrap();
    c.bench_function("1 MiB through ToxicIo, another cluster's fault", |b| {
        b.iter(|| rt.block_on(one_mib(&mut toxic, &mut peer)))
    });
}

criterion_group!(benches, minting, lookup, codec, checksum, toxics);
criterion_main!(benches);
