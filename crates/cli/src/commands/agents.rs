//! `shoes-vz agents …` and `shoes-vz templates list`: the fleet's hosts as an operator sees
//! them, and taking one out of rotation (cordon, drain) or out of the fleet (revoke).

use super::{Output, ServerArgs};
use crate::progress::Progress;
use anyhow::Context;
use shoes_vz_protocol::client::OperatorClient;
use shoes_vz_protocol::operator::v1 as op;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum AgentsCommand {
    /// Every agent: online/offline/cordoned, last seen, slots, CPU and memory free, templates.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One agent and its live runners.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// No new runners on this agent; its live runners finish. Survives restarts.
    Cordon {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
    /// The agent takes new runners again.
    Uncordon {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
    /// Cordon, then (with --wait) wait until the agent runs nothing: for maintenance.
    Drain {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
        /// Wait until its last runner is gone.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// End an agent's access for good: its credential stops working, its runners are destroyed.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TemplatesCommand {
    /// Every agent's templates: name, version, labels (with OS and arch), warm or not.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

pub async fn run(command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::List { server, output } => {
            let agents = list(&mut server.connect().await?).await?;
            match output {
                Output::Json => print_json(&agents.iter().map(agent_json).collect::<Vec<_>>())?,
                Output::Table => print_agents(&agents),
            }
        }
        AgentsCommand::Show {
            server,
            agent_id,
            output,
        } => {
            let shown = server
                .connect()
                .await?
                .get_agent(op::GetAgentRequest { agent_id })
                .await?
                .into_inner();
            let agent = shown.agent.context("the server returned no agent")?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "agent": agent_json(&agent),
                    "runners": shown.runners.iter().map(super::runners::to_json).collect::<Vec<_>>(),
                }))?,
                Output::Table => {
                    print_agents(std::slice::from_ref(&agent));
                    println!();
                    for t in &agent.templates {
                        println!("template {} {} [{}]", t.name, t.version, template_labels(t));
                    }
                    println!();
                    super::runners::print_table(&shown.runners);
                }
            }
        }
        AgentsCommand::Cordon { server, agent_id } => {
            let agent = cordon(&mut server.connect().await?, &agent_id, true).await?;
            println!(
                "{} ({}) is cordoned: no new runners; {} running",
                agent.agent_id, agent.hostname, agent.slots_used
            );
        }
        AgentsCommand::Uncordon { server, agent_id } => {
            let agent = cordon(&mut server.connect().await?, &agent_id, false).await?;
            println!(
                "{} ({}) takes new runners again",
                agent.agent_id, agent.hostname
            );
        }
        AgentsCommand::Drain {
            server,
            agent_id,
            wait,
            timeout,
        } => {
            let mut client = server.connect().await?;
            let agent = cordon(&mut client, &agent_id, true).await?;
            println!(
                "{} ({}) is cordoned; {} runner(s) to finish",
                agent.agent_id, agent.hostname, agent.slots_used
            );
            if wait {
                drain_wait(&mut client, &agent_id, timeout).await?;
            }
        }
        AgentsCommand::Revoke { server, agent_id } => {
            let agent = server
                .connect()
                .await?
                .revoke_agent(op::RevokeAgentRequest { agent_id })
                .await?
                .into_inner();
            println!(
                "{} ({}) is revoked: its credential no longer works and its runners are destroyed",
                agent.agent_id, agent.hostname
            );
        }
    }
    Ok(())
}

pub async fn run_templates(command: TemplatesCommand) -> anyhow::Result<()> {
    match command {
        TemplatesCommand::List { server, output } => {
            let agents = list(&mut server.connect().await?).await?;
            match output {
                Output::Json => {
                    let rows: Vec<serde_json::Value> = agents
                        .iter()
                        .flat_map(|a| {
                            a.templates.iter().map(|t| {
                                serde_json::json!({
                                    "agent_id": a.agent_id, "hostname": a.hostname,
                                    "name": t.name, "version": t.version, "labels": t.labels,
                                    "os": t.os, "arch": t.arch, "warm": t.warm,
                                })
                            })
                        })
                        .collect();
                    print_json(&rows)?;
                }
                Output::Table => {
                    println!(
                        "{:<24} {:<24} {:<20} {:<6} LABELS",
                        "HOST", "TEMPLATE", "VERSION", "WARM"
                    );
                    for a in &agents {
                        for t in &a.templates {
                            println!(
                                "{:<24} {:<24} {:<20} {:<6} {}",
                                a.hostname,
                                t.name,
                                t.version,
                                if t.warm { "yes" } else { "no" },
                                template_labels(t)
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

async fn list(client: &mut OperatorClient) -> anyhow::Result<Vec<op::AgentInfo>> {
    Ok(client
        .list_agents(op::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents)
}

async fn cordon(
    client: &mut OperatorClient,
    agent_id: &str,
    cordoned: bool,
) -> anyhow::Result<op::AgentInfo> {
    Ok(client
        .set_agent_cordon(op::SetAgentCordonRequest {
            agent_id: agent_id.to_string(),
            cordoned,
        })
        .await?
        .into_inner())
}

/// Waits until the agent runs nothing, showing progress.
async fn drain_wait(
    client: &mut OperatorClient,
    agent_id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let progress = Progress::new(&format!("draining {agent_id}"));
    let started = Instant::now();
    let mut last = None;
    loop {
        let agent = client
            .get_agent(op::GetAgentRequest {
                agent_id: agent_id.to_string(),
            })
            .await?
            .into_inner()
            .agent
            .context("the server returned no agent")?;
        if last != Some(agent.slots_used) {
            progress.update(&format!("{} runner(s) left", agent.slots_used));
            last = Some(agent.slots_used);
        }
        if agent.slots_used == 0 {
            progress.finish(&format!(
                "{agent_id} is drained after {:.0?}: cordoned, running nothing",
                started.elapsed()
            ));
            return Ok(());
        }
        if started.elapsed() > timeout {
            progress.finish("gave up waiting");
            anyhow::bail!(
                "{agent_id} still runs {} runner(s) after {timeout:?}; it stays cordoned",
                agent.slots_used
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn template_labels(t: &op::TemplateSummary) -> String {
    let mut labels = t.labels.clone();
    labels.extend(
        [t.os.clone(), t.arch.clone()]
            .into_iter()
            .filter(|l| !l.is_empty()),
    );
    labels.join(",")
}

fn status_of(a: &op::AgentInfo) -> String {
    if a.cordoned && a.status != "revoked" {
        format!("{}+cordoned", a.status)
    } else {
        a.status.clone()
    }
}

fn agent_json(a: &op::AgentInfo) -> serde_json::Value {
    serde_json::json!({
        "agent_id": a.agent_id,
        "hostname": a.hostname,
        "status": a.status,
        "cordoned": a.cordoned,
        "last_seen_ms": a.last_seen_ms,
        "slots": {"used": a.slots_used, "total": a.slots_total},
        "cpu_cores": {"free": a.cpu_cores_free, "total": a.cpu_cores_total},
        "memory_mib": {"free": a.memory_mib_free, "total": a.memory_mib_total},
        "templates": a.templates.iter().map(|t| serde_json::json!({
            "name": t.name, "version": t.version, "labels": t.labels, "os": t.os,
            "arch": t.arch, "warm": t.warm,
        })).collect::<Vec<_>>(),
        "version": a.version,
        "backend": a.backend,
        "registered_at_ms": a.registered_at_ms,
    })
}

fn print_agents(agents: &[op::AgentInfo]) {
    println!(
        "{:<34} {:<20} {:<17} {:>10} {:>7} {:>9} {:>12} {:<8} TEMPLATES",
        "AGENT", "HOST", "STATUS", "LAST SEEN", "SLOTS", "CPU FREE", "MEM FREE", "VERSION"
    );
    let now = shoes_vz_model::clock::now_ms();
    for a in agents {
        let seen = Duration::from_millis(u64::try_from(now - a.last_seen_ms).unwrap_or(0));
        println!(
            "{:<34} {:<20} {:<17} {:>9.0?} {:>3}/{:<3} {:>4}/{:<4} {:>5}/{:<6} {:<8} {}",
            a.agent_id,
            a.hostname,
            status_of(a),
            Duration::from_secs(seen.as_secs()),
            a.slots_used,
            a.slots_total,
            a.cpu_cores_free,
            a.cpu_cores_total,
            a.memory_mib_free,
            a.memory_mib_total,
            a.version,
            a.templates
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if agents.is_empty() {
        println!("(no agents)");
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
