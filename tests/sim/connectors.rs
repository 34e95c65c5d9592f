//! The connectors in the simulation (issue 19): names that resolve to a dead address
//! first, raced by the crate's happy eyeballs code (`Net::dead_first_address`), TLS on
//! every connection through the crate's `TlsConnector` code (`Net::tls`), and Unix
//! socket endpoints (the generator names the hosts `"unix:PATH"`). The check of their
//! own: `eyeballs_reach_the_next_address`.

use std::collections::BTreeSet;
use std::time::Duration;

use socketchannel::testing::{Net, Violation, What};

use super::checks::reconfigures;
use super::proto::{SimCodec, SimServer};
use super::run::Ctx;
use super::scenario::{Op, Scenario};

/// `Net::new`'s connect latency.
pub const LATENCY: Duration = Duration::from_millis(1);
/// `Net`'s happy eyeballs delay, left at its default (RFC 8305's, `TcpConnector`'s).
const DELAY: Duration = Duration::from_millis(250);

/// Sets the scenario's connectors up on `net`: the dead first addresses, and TLS.
pub fn install(net: &Net<SimServer, SimCodec>, scn: &Scenario) {
    for (h, dead) in scn.hosts.iter().zip(&scn.dead_first) {
        net.dead_first_address(h, dead.clone());
    }
    if scn.tls {
        tls(net);
    }
}

/// `eyeballs_reach_the_next_address` (RFC 8305 over the crate's race): an attempt to a
/// host's dead first address is followed by one to the host itself within the happy
/// eyeballs delay, or at once when the dead one refused, unless the attempt ended
/// first: the client's connect timeout was shorter, an operation reconfigured the
/// client meanwhile, closed or shut it down before, a call marked a panic (which
/// closes the channel) was made by then, or the scenario ended.
pub fn eyeballs_reach_the_next_address(
    ctx: &Ctx,
    net: &Net<SimServer, SimCodec>,
    scn: &Scenario,
) -> Vec<Violation> {
    let records = net.log().records();
    let calls = ctx.ledger.calls();
    // A panic in user code closes the channel (its connection task's), a pass with it.
    let panicked = |client: usize, by: Duration| {
        calls.iter().any(|c| {
            let through = c.client == client
                || (c.client == scn.clients.len()
                    && scn.balance.is_some_and(|pair| pair.contains(&client)));
            through
                && c.created <= by
                && (c.shape.contains("panic=Some") || c.shape.contains(" p="))
        })
    };
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        let What::DeadAddress(why) = r.what else {
            continue;
        };
        let Some(plan) = scn.clients.get(r.client) else {
            continue;
        };
        // The dead attempt started a latency before its record, the host's starts at
        // most the delay after that (at once after a refusal), and its record comes a
        // latency later.
        let started = r.at.saturating_sub(LATENCY);
        let wait = if why == "refused" { LATENCY } else { DELAY };
        let due = started + wait + LATENCY;
        let cut_short = Duration::from_millis(plan.connect_timeout) < wait + LATENCY
            || due > Duration::from_millis(scn.end)
            || panicked(r.client, due)
            || scn.ops.iter().any(|(at, op)| {
                let at = Duration::from_millis(*at);
                // A close or a shutdown ends a pass whenever it comes to it.
                let ends =
                    matches!(op, Op::Close(c) | Op::Shutdown { client: c, .. } if *c == r.client);
                at <= due && (ends || (reconfigures(op, r.client) && at >= started))
            });
        if cut_short {
            continue;
        }
        let next = records[i + 1..].iter().find(|n| {
            n.client == r.client && n.host == r.host && matches!(n.what, What::Connect(_))
        });
        if next.is_none_or(|n| n.at > due) && reported.insert(r.client) {
            out.push(Violation::new(
                "eyeballs_reach_the_next_address",
                format!(
                    "client {}: its attempt to {}'s dead first address ({why}) at {} ms was not followed by one to the host by {} ms (next: {:?})",
                    r.client,
                    r.host,
                    r.at.as_millis(),
                    due.as_millis(),
                    next.map(|n| n.at.as_millis()),
                ),
            ));
        }
    }
    out
}

/// TLS on every new connection of `net`, with a CA and a server certificate made for
/// the run (the same for every scenario of a process).
#[cfg(feature = "rustls")]
fn tls(net: &Net<SimServer, SimCodec>) {
    use std::sync::{Arc, OnceLock};

    use socketchannel::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use socketchannel::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

    /// The CA's certificate, the server's, and the server's key.
    struct Certs {
        ca: CertificateDer<'static>,
        server: CertificateDer<'static>,
        key: Vec<u8>,
    }

    /// Ed25519 keys and fixed serial numbers: every signature, and so every handshake,
    /// has the same length in every process, and the byte counts the cuts and the
    /// checks see stay those of the seed.
    fn certs() -> &'static Certs {
        static CERTS: OnceLock<Certs> = OnceLock::new();
        CERTS.get_or_init(|| {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
            let ed25519 = || KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("a key");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca.distinguished_name.push(DnType::CommonName, "sim CA");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.serial_number = Some(1u64.into());
            let ca_key = ed25519();
            let ca_cert = ca.self_signed(&ca_key).expect("the CA").der().clone();
            let issuer = Issuer::new(ca, ca_key);
            // Every name the generator gives a TCP host (`h0` to `h7`): the client checks
            // the certificate against the endpoint's host, as `TlsConnector` does.
            let names = (0..8).map(|i| format!("h{i}")).collect::<Vec<_>>();
            let mut leaf = CertificateParams::new(names).expect("params");
            leaf.serial_number = Some(2u64.into());
            let key = ed25519();
            let server = leaf
                .signed_by(&key, &issuer)
                .expect("the server's")
                .der()
                .clone();
            Certs {
                ca: ca_cert,
                server,
                key: key.serialize_der(),
            }
        })
    }

    let certs = certs();
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(certs.ca.clone()).expect("the CA's certificate");
    // No resumption: a session one scenario left would change the next one's handshake.
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    // Small records, so that one write of a few calls is several records: a cut can
    // then fall after whole records of a write whose later record fails, the case where
    // the TLS session fails a write after some of it left.
    client.max_fragment_size = Some(32);
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![certs.server.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.key.clone())),
        )
        .expect("the server's certificate and key");
    server.send_tls13_tickets = 0;
    net.tls(Arc::new(client), Arc::new(server), None);
}

/// Without the feature `rustls` the generator draws no TLS scenario.
#[cfg(not(feature = "rustls"))]
fn tls(_net: &Net<SimServer, SimCodec>) {
    unreachable!("no TLS scenario without the feature `rustls`")
}

/// Runs `test` on an empty network of the simulation's server, in paused time, as the
/// simulation runs a scenario.
fn on_a_net<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(socketchannel::testing::Trace, Net<SimServer, SimCodec>) -> F,
) {
    use socketchannel::testing::Trace;

    use super::proto::Journal;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    // Made in the runtime, so the trace's epoch is on its paused clock.
    let _entered = rt.enter();
    let trace = Trace::new();
    let net = Net::new(
        SimServer::default(),
        SimCodec::new(Journal::new(trace.epoch())),
        trace.clone(),
    );
    rt.block_on(test(trace, net));
}

/// `connect_rate` counts a race over a dead first address as an attempt even when it
/// never reached the live address: a client whose connect timeout (50 ms) ends every
/// race inside the happy eyeballs delay, and whose backoff is 1 ms, makes about 16
/// attempts a second, none of them a `Connect` record.
#[test]
fn connect_rate_counts_races_that_never_reach_the_live_address() {
    use socketchannel::testing::{Behavior, Ledger, checks};
    use socketchannel::{Backoff, Channel, Order};

    use super::proto::{Msg, SimProto};

    on_a_net(|trace, net| async move {
        net.set("h0:7000", Behavior::Up);
        net.dead_first_address("h0:7000", Some(Behavior::Blackhole));
        let ch: Channel<Msg, Msg> = Channel::builder()
            .host("h0:7000")
            .connect_timeout(Duration::from_millis(50))
            .backoff(Backoff::exponential(
                Duration::from_millis(1),
                Duration::from_millis(1),
            ))
            .connector(net.connector(0), Order::new(SimProto::default()))
            .expect("a valid host");
        for _ in 0..40 {
            let err = ch
                .request(Msg::new("x"))
                .await
                .expect_err("every race times out");
            assert!(err.is_not_sent(), "{err}");
            // Past the backoff, so the next call starts a pass instead of failing fast.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = net.log();
        assert!(
            !log.records()
                .iter()
                .any(|r| matches!(r.what, What::Connect(_))),
            "no race reached the live address"
        );
        let found = checks::connect_rate(&Ledger::new(trace), &log, &|_| 5, &[]);
        assert!(
            found.iter().any(|v| v.to_string().contains("connect_rate")),
            "{found:?}"
        );
    });
}

/// The builder's connect timeout, around the connector, bounds the whole race (RFC
/// 8305), not each address: with the
/// dead first address and the live one both black holes and a 400 ms timeout, a call
/// fails *not sent* 400 ms after the pass began (plus the network's 1 ms latency),
/// though the second attempt began only at 250 ms.
#[test]
fn the_connect_timeout_bounds_the_whole_race() {
    use socketchannel::testing::Behavior;
    use socketchannel::{Channel, Kind, Order};

    use super::proto::{Msg, SimProto};

    on_a_net(|_, net| async move {
        net.set("h0:7000", Behavior::Blackhole);
        net.dead_first_address("h0:7000", Some(Behavior::Blackhole));
        let ch: Channel<Msg, Msg> = Channel::builder()
            .host("h0:7000")
            .connect_timeout(Duration::from_millis(400))
            .connector(net.connector(0), Order::new(SimProto::default()))
            .expect("a valid host");
        let start = tokio::time::Instant::now();
        let err = ch
            .request(Msg::new("x"))
            .await
            .expect_err("nothing answers");
        let took = start.elapsed();
        assert_eq!(err.kind(), Kind::ConnectFailed, "{err}");
        assert!(err.is_not_sent(), "{err}");
        assert!(
            took >= Duration::from_millis(400) && took <= Duration::from_millis(402),
            "failed after {took:?}"
        );
        let attempts: Vec<_> = net
            .log()
            .records()
            .iter()
            .map(|r| (r.at.as_millis(), format!("{:?}", r.what)))
            .collect();
        assert_eq!(attempts.len(), 2, "both addresses tried: {attempts:?}");
        assert!(
            attempts[1].0 >= 250,
            "the second after the delay: {attempts:?}"
        );
    });
}
