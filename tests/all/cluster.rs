//! Many hosts: the etcd harness, the etcd registry backend, placement and routing
//! (issue 8). Each test starts its own private etcd on loopback.

use crate::support::etcd::Etcd;

/// The harness itself: a private etcd starts, answers a put/get through `etcd-client`, and
/// is gone after drop.
#[test]
fn private_etcd_starts_and_answers() {
    let Some(bin) = Etcd::binary("cluster::private_etcd_starts_and_answers") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let value = rt.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .expect("connect to the private etcd");
        client.put("/wasmail-test/k", "v1", None).await.unwrap();
        let got = client.get("/wasmail-test/k", None).await.unwrap();
        got.kvs()[0].value_str().unwrap().to_string()
    });
    assert_eq!(value, "v1");
    let port = etcd.port;
    drop(etcd);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "etcd still listening on {port} after drop"
    );
}
