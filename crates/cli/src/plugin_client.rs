//! Drives `shoes-vz-plugin` the way myshoes does through hashicorp/go-plugin: a fresh plugin
//! process per call with the magic cookie, its one handshake line on stdout, the
//! `whywaita.myshoes.Shoes` call over gRPC, then `GRPCController/Shutdown`.

use anyhow::{bail, Context};
use shoes_vz_plugin::proto::myshoes;
use shoes_vz_plugin::proto::myshoes::shoes_client::ShoesClient;
use shoes_vz_plugin::proto::plugin::grpc_controller_client::GrpcControllerClient;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How myshoes would start the plugin: its path and the environment it passes on.
#[derive(Debug, Clone)]
pub struct PluginHost {
    pub plugin: PathBuf,
    pub server_addr: String,
    /// Passed in the environment, as myshoes' own environment carries it.
    pub token: String,
}

struct Running {
    child: Child,
    channel: tonic::transport::Channel,
    /// Kept open: a plugin writing to a closed stdout would die of SIGPIPE.
    _stdout: BufReader<tokio::process::ChildStdout>,
}

impl PluginHost {
    async fn launch(&self) -> anyhow::Result<Running> {
        let mut child = Command::new(&self.plugin)
            .env("SHOES_PLUGIN_MAGIC_COOKIE", "are_you_a_shoes?")
            .env("PLUGIN_PROTOCOL_VERSIONS", "1")
            .env("SHOESVZ_SERVER_ADDR", &self.server_addr)
            .env("SHOESVZ_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the plugin {}", self.plugin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the plugin's stdout is not piped")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
            .await
            .context("the plugin printed no handshake line within 1 minute")??;
        let fields: Vec<&str> = line.trim_end().split('|').collect();
        let ["1", "1", "tcp", addr, "grpc"] = fields.as_slice() else {
            bail!("unexpected plugin handshake line {line:?}");
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("cannot connect to the plugin's gRPC address")?;
        Ok(Running {
            child,
            channel,
            _stdout: stdout,
        })
    }

    /// myshoes' AddInstance through a fresh plugin process.
    pub async fn add_instance(
        &self,
        request: myshoes::AddInstanceRequest,
    ) -> Result<myshoes::AddInstanceResponse, tonic::Status> {
        let running = self
            .launch()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        let reply = ShoesClient::new(running.channel.clone())
            .add_instance(request)
            .await;
        shut_down(running).await;
        reply.map(tonic::Response::into_inner)
    }

    /// myshoes' DeleteInstance through a fresh plugin process.
    pub async fn delete_instance(&self, cloud_id: &str) -> Result<(), tonic::Status> {
        let running = self
            .launch()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        let request = myshoes::DeleteInstanceRequest {
            cloud_id: cloud_id.to_string(),
            labels: Vec::new(),
        };
        let reply = ShoesClient::new(running.channel.clone())
            .delete_instance(request)
            .await;
        shut_down(running).await;
        reply.map(|_| ())
    }
}

/// go-plugin's Kill(): ask for Shutdown, wait up to 2 s for the exit, then kill.
async fn shut_down(mut running: Running) {
    let _ = GrpcControllerClient::new(running.channel)
        .shutdown(shoes_vz_plugin::proto::plugin::Empty {})
        .await;
    if tokio::time::timeout(Duration::from_secs(2), running.child.wait())
        .await
        .is_err()
    {
        let _ = running.child.kill().await;
    }
}
