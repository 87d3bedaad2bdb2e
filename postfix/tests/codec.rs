//! The tokio codecs end to end: a client `Framed` talks to a server `Framed` over an
//! in-memory duplex pipe, pipelining several requests, as Postfix reuses its connection.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, duplex};
use tokio_util::codec::{Framed, FramedRead};
use wasmail_postfix::{CodecError, policy, socketmap, tcp};

#[tokio::test]
async fn socketmap_pipelined_lookups() {
    let (c, s) = duplex(64);
    let server = tokio::spawn(async move {
        let mut framed = Framed::new(s, socketmap::ServerCodec::default());
        while let Some(req) = framed.next().await {
            let req = req.expect("valid request");
            let reply = match (req.table.as_str(), &req.key[..]) {
                ("mailboxes", b"bob@example.com") => socketmap::Reply::Ok(Bytes::from("ok")),
                ("mailboxes", _) => socketmap::Reply::NotFound,
                _ => socketmap::Reply::Perm(format!("no table {}", req.table)),
            };
            framed.send(reply).await.expect("send");
        }
    });
    let mut client = Framed::new(c, socketmap::ClientCodec);
    for key in ["bob@example.com", "eve@example.com"] {
        client
            .feed(socketmap::Request::new("mailboxes", Bytes::from(key)))
            .await
            .unwrap();
    }
    client
        .send(socketmap::Request::new("nosuch", Bytes::from("k")))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(client.next().await.unwrap().unwrap());
    }
    assert_eq!(
        got,
        vec![
            socketmap::Reply::Ok(Bytes::from("ok")),
            socketmap::Reply::NotFound,
            socketmap::Reply::Perm("no table nosuch".into()),
        ]
    );
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn socketmap_server_refuses_oversize_before_reading_it() {
    let (mut c, s) = duplex(64);
    c.write_all(b"100001:").await.unwrap();
    let mut framed = FramedRead::new(s, socketmap::ServerCodec::default());
    match framed.next().await {
        Some(Err(CodecError::Protocol(socketmap::Error::Netstring(e)))) => {
            assert_eq!(
                e.to_string(),
                "netstring declares at least 100001 bytes, above the limit of 100000"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tcp_get_and_unsupported() {
    let (c, s) = duplex(64);
    let server = tokio::spawn(async move {
        let mut framed = Framed::new(s, tcp::ServerCodec);
        while let Some(req) = framed.next().await {
            match req.expect("valid request") {
                tcp::Request::Get(key) if key == b"hello world%" => {
                    framed
                        .send(tcp::Reply::Found(b"HELLO WORLD%".to_vec()))
                        .await
                        .unwrap();
                }
                tcp::Request::Get(_) => {
                    framed
                        .send(tcp::Reply::NotFound("not found".into()))
                        .await
                        .unwrap();
                }
                tcp::Request::Unsupported(verb) => {
                    framed
                        .send(tcp::Reply::Temp(format!("unsupported request {verb}")))
                        .await
                        .unwrap();
                    return;
                }
            }
        }
    });
    let mut client = Framed::new(c, tcp::ClientCodec);
    client
        .send(tcp::Request::Get(b"hello world%".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        tcp::Reply::Found(b"HELLO WORLD%".to_vec())
    );
    client.send(tcp::Request::Get(b"x".to_vec())).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        tcp::Reply::NotFound("not found".into())
    );
    client
        .send(tcp::Request::Unsupported("put".into()))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        tcp::Reply::Temp("unsupported request put".into())
    );
    server.await.unwrap();
    assert!(client.next().await.is_none(), "server closed after 400");
}

#[tokio::test]
async fn policy_request_trickled_byte_by_byte() {
    let (mut c, s) = duplex(1);
    let server = tokio::spawn(async move {
        let mut framed = Framed::new(s, policy::ServerCodec::default());
        let req = framed.next().await.unwrap().expect("valid request");
        let action = format!(
            "REJECT 5.7.1 {} blocked",
            req.get("recipient").unwrap_or("?")
        );
        framed.send(policy::Reply::new(action)).await.unwrap();
        framed.next().await.transpose()
    });
    c.write_all(
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=spam@example.test\n\n",
    )
    .await
    .unwrap();
    let mut client = FramedRead::new(&mut c, policy::ClientCodec::default());
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        policy::Reply::new("REJECT 5.7.1 spam@example.test blocked")
    );
    drop(client);
    // A malformed line ends the conversation with an error on the server side.
    c.write_all(b"no equals sign\n").await.unwrap();
    match server.await.unwrap() {
        Err(CodecError::Protocol(policy::Error::MissingEquals { line: 1, .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn policy_client_encoder_rejects_bad_attributes() {
    let (c, _s) = duplex(64);
    let mut client = Framed::new(c, policy::ClientCodec::default());
    let err = client
        .send(policy::Request::new([("bad=name", "v")]))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CodecError::Protocol(policy::Error::InvalidAttribute { .. })
    ));
}
