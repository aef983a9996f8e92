//! Bad input on every API myshoes and agents use, as a table: no panic, and the codes of the
//! README's table (InvalidArgument for what can never succeed, NotFound for a DeleteInstance of
//! something that cannot exist), including bytes no protobuf decoder accepts and a message far
//! over the decode limit.

mod common;

use bytes::{Buf, BufMut};
use common::*;
use shoes_vz_protocol::agent::v1 as agent_pb;
use shoes_vz_protocol::shoes::v1 as pb;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

/// Sends and receives raw bytes, so a test can put anything on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining()).to_vec();
        Ok(Some(bytes))
    }
}

async fn raw_channel(cluster: &shoes_vz_cli::cluster::LocalCluster) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.server.grpc_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// One unary call with raw bytes as the message.
async fn raw_unary(
    channel: &tonic::transport::Channel,
    path: &'static str,
    token: &str,
    body: Vec<u8>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match grpc
        .unary(request, PathAndQuery::from_static(path), RawCodec)
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Sync with raw bytes as its first message.
async fn raw_sync(channel: &tonic::transport::Channel, token: &str, first: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(tokio_stream::iter(vec![first]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let path = PathAndQuery::from_static("/shoes.vz.agent.v1.AgentService/Sync");
    match grpc.streaming(request, path, RawCodec).await {
        Ok(mut response) => match response.get_mut().message().await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        },
        Err(status) => status.code(),
    }
}

fn encode(message: &impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

/// A valid AddInstanceRequest whose setup script makes it `bytes` long.
fn add_of_size(bytes: usize) -> Vec<u8> {
    encode(&pb::AddInstanceRequest {
        runner_name: "myshoes-huge".into(),
        setup_script: "x".repeat(bytes),
        resource_type: 1,
        labels: vec!["self-hosted".into()],
    })
}

fn hello(agent_id: &str) -> Vec<u8> {
    encode(&agent_pb::AgentMessage {
        message: Some(agent_pb::agent_message::Message::Hello(agent_pb::Hello {
            agent_id: agent_id.into(),
        })),
    })
}

/// Bytes no protobuf decoder accepts: a field with wire type 7.
const MALFORMED: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x07];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_code_and_breaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let long = "a".repeat(10 * 1024);

    let mut table: Vec<(&str, pb::AddInstanceRequest)> = Vec::new();
    let base = add_request("myshoes-bad-input", "true\n");
    for (what, name) in [
        ("runner_name with ../", "../etc/passwd"),
        ("runner_name with NUL", "myshoes-\0-x"),
        ("runner_name of 10 KB", long.as_str()),
    ] {
        let mut request = base.clone();
        request.runner_name = name.to_string();
        table.push((what, request));
    }
    for (what, size) in [("2 MB script", 2 << 20), ("10 MB script", 10 << 20)] {
        let mut request = base.clone();
        request.setup_script = "#".repeat(size);
        table.push((what, request));
    }
    let mut unknown_type = base.clone();
    unknown_type.resource_type = 999;
    table.push(("resource type 999", unknown_type));
    let mut many_labels = base.clone();
    many_labels.labels = (0..1000).map(|i| format!("label-{i}")).collect();
    table.push(("1000 labels", many_labels));
    for (what, request) in table {
        let status = client.add_instance(request).await.expect_err(what);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "AddInstance, {what}: {status:?}"
        );
        assert!(
            !status.message().contains("######"),
            "{what}: the script is not echoed"
        );
    }

    for (what, cloud_id) in [
        ("cloud_id with ../", "shoes-vz-../../etc".to_string()),
        ("cloud_id with NUL", "shoes-vz-\0".to_string()),
        ("cloud_id of 10 KB", long.clone()),
    ] {
        let status = client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id,
                labels: vec![],
            })
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            Code::NotFound,
            "DeleteInstance, {what}: {status:?}"
        );
    }

    let channel = raw_channel(&cluster).await;
    let add = "/shoes.vz.shoes.v1.ShoesService/AddInstance";
    let delete = "/shoes.vz.shoes.v1.ShoesService/DeleteInstance";
    let register = "/shoes.vz.agent.v1.AgentService/RegisterAgent";
    for (what, path, body) in [
        ("AddInstance, malformed bytes", add, MALFORMED.to_vec()),
        ("AddInstance, a 100 MB message", add, add_of_size(100 << 20)),
        (
            "DeleteInstance, malformed bytes",
            delete,
            MALFORMED.to_vec(),
        ),
        (
            "DeleteInstance, a 100 MB message",
            delete,
            vec![0x0a; 100 << 20],
        ),
        (
            "RegisterAgent, malformed bytes",
            register,
            MALFORMED.to_vec(),
        ),
    ] {
        let token = if path == register {
            &cluster.options.agent_token
        } else {
            &cluster.options.token
        };
        let code = raw_unary(&channel, path, token, body).await;
        assert_eq!(code, Code::InvalidArgument, "{what}");
    }

    let enrollment = cluster.options.agent_token.clone();
    for (what, first) in [
        ("Sync, malformed bytes", MALFORMED.to_vec()),
        ("Sync, a 100 MB message", add_of_size(100 << 20)),
        ("Sync, Hello with ../", hello("../x")),
        ("Sync, Hello with NUL", hello("a\0b")),
        ("Sync, Hello of 10 KB", hello(&long)),
    ] {
        let code = raw_sync(&channel, &enrollment, first).await;
        assert_eq!(code, Code::InvalidArgument, "{what}");
    }
    let bad_registration = agent_pb::RegisterAgentRequest {
        agent_id: "../etc".into(),
        hostname: long.clone(),
        ..Default::default()
    };
    let code = raw_unary(&channel, register, &enrollment, encode(&bad_registration)).await;
    assert_eq!(code, Code::InvalidArgument, "RegisterAgent with a bad id");

    // Nothing broke: the server and its agent still serve.
    let reply = client
        .add_instance(add_request("myshoes-still-fine", "true\n"))
        .await
        .expect("the server still works")
        .into_inner();
    wait_state(&mut client, &reply.cloud_id, "running").await;
    assert_eq!(cluster.server.fleet.gauges().agents_online, 1);
    tokio::time::timeout(Duration::from_secs(60), cluster.shutdown())
        .await
        .expect("shuts down");
}
