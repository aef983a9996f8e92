//! `shoes-vz agents …` and `shoes-vz templates list`: the fleet's hosts as an operator sees
//! them, and taking one out of rotation (cordon, drain) or out of the fleet (revoke).

use super::{Output, ServerArgs};
use crate::human;
use crate::output::print_json;
use crate::progress::Progress;
use anyhow::Context;
use shoes_vz_protocol::client::OperatorClient;
use shoes_vz_protocol::operator::v1 as op;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum AgentsCommand {
    /// Every agent: online/offline/cordoned, last seen, slots, CPU and memory free, templates.
    ///
    /// --output json: an array of agent records ({"agent_id", "hostname", "status",
    /// "cordoned", "last_seen_ms", "slots": {"used", "total"}, "cpu_cores", "memory_mib",
    /// "templates", "version", "backend", "registered_at_ms"}).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One agent and its live runners.
    ///
    /// --output json: {"agent": <agent record as in `agents list`>, "runners": [<runner
    /// record as in `runners list`>]}.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
    /// No new runners on this agent; its live runners finish. Survives restarts.
    ///
    /// --output json: the agent's record afterwards (as in `agents list`).
    Cordon {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
    /// The agent takes new runners again.
    ///
    /// --output json: the agent's record afterwards (as in `agents list`).
    Uncordon {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
    /// Cordon, then (with --wait) wait until the agent runs nothing: for maintenance.
    ///
    /// Progress goes to stderr (a spinner on a terminal, plain lines otherwise). --output json:
    /// the agent's record once cordoned, or with --wait once drained (as in `agents list`).
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
    ///
    /// --output json: the agent's record afterwards (as in `agents list`).
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        agent_id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TemplatesCommand {
    /// Every agent's templates: name, version, labels (with OS and arch), warm or not.
    ///
    /// --output json: an array, one object per agent and template: {"agent_id", "hostname",
    /// "name", "version", "labels", "os", "arch", "warm"}.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: AgentsCommand, output: Output) -> anyhow::Result<()> {
    match command {
        AgentsCommand::List { server } => {
            let agents = list(&mut server.connect().await?).await?;
            match output {
                Output::Json => print_json(&agents.iter().map(agent_json).collect::<Vec<_>>())?,
                Output::Table => print_agents(&agents),
            }
        }
        AgentsCommand::Show { server, agent_id } => {
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
            match output {
                Output::Json => print_json(&agent_json(&agent))?,
                Output::Table => println!(
                    "{} ({}) is cordoned: no new runners; {} running",
                    agent.agent_id, agent.hostname, agent.slots_used
                ),
            }
        }
        AgentsCommand::Uncordon { server, agent_id } => {
            let agent = cordon(&mut server.connect().await?, &agent_id, false).await?;
            match output {
                Output::Json => print_json(&agent_json(&agent))?,
                Output::Table => println!(
                    "{} ({}) takes new runners again",
                    agent.agent_id, agent.hostname
                ),
            }
        }
        AgentsCommand::Drain {
            server,
            agent_id,
            wait,
            timeout,
        } => {
            let mut client = server.connect().await?;
            let mut agent = cordon(&mut client, &agent_id, true).await?;
            human!(
                output,
                "{} ({}) is cordoned; {} runner(s) to finish",
                agent.agent_id,
                agent.hostname,
                agent.slots_used
            );
            if wait {
                agent = drain_wait(&mut client, &agent_id, timeout).await?;
            }
            if output.is_json() {
                print_json(&agent_json(&agent))?;
            }
        }
        AgentsCommand::Revoke { server, agent_id } => {
            let agent = server
                .connect()
                .await?
                .revoke_agent(op::RevokeAgentRequest { agent_id })
                .await?
                .into_inner();
            match output {
                Output::Json => print_json(&agent_json(&agent))?,
                Output::Table => println!(
                    "{} ({}) is revoked: its credential no longer works and its runners are destroyed",
                    agent.agent_id, agent.hostname
                ),
            }
        }
    }
    Ok(())
}

pub async fn run_templates(command: TemplatesCommand, output: Output) -> anyhow::Result<()> {
    match command {
        TemplatesCommand::List { server } => {
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

/// Waits until the agent runs nothing, showing progress; returns its drained record.
async fn drain_wait(
    client: &mut OperatorClient,
    agent_id: &str,
    timeout: Duration,
) -> anyhow::Result<op::AgentInfo> {
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
            return Ok(agent);
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
