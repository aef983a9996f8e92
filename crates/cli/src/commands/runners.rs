//! `shoes-vz runners list|delete`: operators' view of the fleet's runners.

use super::{Output, ServerArgs};
use shoes_vz_model::ResourceType;
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;

#[derive(clap::Subcommand, Debug)]
pub enum RunnersCommand {
    /// List runners (live ones; --all adds deleted ones).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Include deleted runners.
        #[arg(long)]
        all: bool,
    },
    /// Delete a runner by its cloud id (shoes-vz-…); idempotent.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
    },
}

pub async fn run(command: RunnersCommand) -> anyhow::Result<()> {
    match command {
        RunnersCommand::List {
            server,
            output,
            all,
        } => {
            let mut client = server.connect().await?;
            let runners = crate::fleet_client::list_all(&mut client, all).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&runners.iter().map(to_json).collect::<Vec<_>>())?
                ),
                Output::Table => print_table(&runners),
            }
        }
        RunnersCommand::Delete { server, cloud_id } => {
            let mut client = server.connect().await?;
            client
                .delete_runner(op::DeleteRunnerRequest {
                    cloud_id: cloud_id.clone(),
                })
                .await?;
            println!("deleted {cloud_id}");
        }
    }
    Ok(())
}

fn resource_name(value: i32) -> &'static str {
    ResourceType::from_i32(value).map_or("?", ResourceType::as_str)
}

pub(crate) fn to_json(r: &pb::RunnerInfo) -> serde_json::Value {
    let t = r.timings.unwrap_or_default();
    serde_json::json!({
        "cloud_id": r.cloud_id,
        "runner_name": r.runner_name,
        "state": r.state,
        "agent_id": r.agent_id,
        "agent_hostname": r.agent_hostname,
        "template": r.template,
        "resource_type": resource_name(r.resource_type),
        "vcpus": r.vcpus,
        "memory_mib": r.memory_mib,
        "ip_address": r.ip_address,
        "guest_runner_state": r.guest_runner_state,
        "error": r.error,
        "labels": r.labels,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "timings_ms": {
            "clone": t.clone_ms, "boot_to_ip": t.boot_to_ip_ms, "boot_to_ssh": t.boot_to_ssh_ms,
            "setup": t.setup_ms, "startup": t.startup_ms,
        },
    })
}

pub(crate) fn print_table(runners: &[pb::RunnerInfo]) {
    println!(
        "{:<42} {:<13} {:<16} {:<9} {:<15} {:>9} {:>9}",
        "CLOUD ID", "STATE", "TEMPLATE", "TYPE", "IP", "CLONE ms", "SSH ms"
    );
    for r in runners {
        let t = r.timings.unwrap_or_default();
        println!(
            "{:<42} {:<13} {:<16} {:<9} {:<15} {:>9} {:>9}",
            r.cloud_id,
            r.state,
            r.template,
            resource_name(r.resource_type),
            r.ip_address,
            t.clone_ms,
            t.boot_to_ssh_ms
        );
    }
    if runners.is_empty() {
        println!("(no runners)");
    }
}
