//! `taskbroker topic ...`, `taskbroker group ...` and `taskbroker cluster status`: the admin
//! commands, through the client library's [`Admin`](taskbroker_client::Admin).

use std::time::Duration;

use clap::{Args, Subcommand};
use taskbroker_client::proto::GroupMode;
use taskbroker_client::{ClusterStatus, GroupDescription, TopicMeta, TopicSpec};

use super::common::{human_ms, millis, parse_duration, table, CliError, ClientArgs};
use crate::http::admin::{Requeued, TopicDeleted};

/// `taskbroker topic`.
#[derive(Debug, Args)]
pub struct TopicArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// Topic subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (idempotent with the same settings).
    Create(TopicCreateArgs),
    /// List every topic.
    List,
    /// Partitions, replicas, leaders and settings of a topic.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its tasks.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Add partitions to a topic (keys hash over the new count from then on).
    AddPartitions {
        /// Topic name.
        name: String,
        /// Partitions to add.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
}

/// `taskbroker topic create`.
#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name.
    pub name: String,
    /// Partitions (default 12).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// Replication factor (default min(3, nodes)).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replication: Option<u32>,
    /// Default lease length of a fetched task (500ms, 30s, 5m, 1h; default 30s).
    #[arg(long, value_parser = parse_duration)]
    pub visibility_timeout: Option<Duration>,
    /// Deliveries before a task is dead-lettered (default 5; 0 = unlimited).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// How long tasks are kept (e.g. 168h).
    #[arg(long, value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Topic that receives dead letters.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
}

impl TopicCreateArgs {
    fn spec(&self) -> TopicSpec {
        TopicSpec {
            partitions: self.partitions,
            replication_factor: self.replication,
            retention_ms: self.retention.map(millis),
            retention_bytes: None,
            visibility_timeout_ms: self.visibility_timeout.map(millis),
            max_attempts: self.max_attempts,
            dead_letter_topic: self.dead_letter_topic.clone(),
        }
    }
}

/// `taskbroker group`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// Group subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Mode and, per partition, ready / delayed / in flight / acked / dead letters / lag.
    Describe {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
    },
    /// Move the group's dead letters back to ready: those kept in the group, and those in the
    /// topic's dead-letter topic (back to the topic, for this group only). Safe to repeat.
    Requeue {
        /// Topic.
        topic: String,
        /// Group.
        group: String,
    },
}

/// `taskbroker cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes, the metadata leader, partition leaders and lagging replicas.
    Status,
}

/// Runs `taskbroker topic ...`.
///
/// # Errors
/// The cluster's answer, as one line.
pub async fn topic(args: TopicArgs) -> Result<(), CliError> {
    let out = &args.client;
    let admin = out.connect().await?.admin();
    match args.command {
        TopicCommand::Create(c) => {
            let t = admin.create_topic(&c.name, c.spec()).await?;
            out.print(&t, || {
                format!(
                    "created topic {} ({} partitions, replication {})\n",
                    t.name,
                    t.partitions.len(),
                    t.replication_factor
                )
            })
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            out.print(&topics, || topics_text(&topics))
        }
        TopicCommand::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            out.print(&t, || topic_text(&t))
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            let d = TopicDeleted {
                topic: name,
                deleted: true,
            };
            out.print(&d, || format!("deleted topic {}\n", d.topic))
        }
        TopicCommand::AddPartitions { name, count } => {
            let t = admin.add_partitions(&name, count).await?;
            out.print(&t, || {
                format!(
                    "topic {} now has {} partitions\n",
                    t.name,
                    t.partitions.len()
                )
            })
        }
    }
}

/// Runs `taskbroker group ...`.
///
/// # Errors
/// The cluster's answer, as one line.
pub async fn group(args: GroupArgs) -> Result<(), CliError> {
    let out = &args.client;
    let admin = out.connect().await?.admin();
    match args.command {
        GroupCommand::Describe { topic, group } => {
            let g = admin.describe_group(&topic, &group).await?;
            out.print(&g, || group_text(&g))
        }
        GroupCommand::Requeue { topic, group } => {
            let requeued = admin.requeue_dead_letters(&topic, &group).await?;
            let r = Requeued {
                topic,
                group,
                requeued,
            };
            out.print(&r, || {
                format!(
                    "requeued {} dead letters of group {} on {}\n",
                    r.requeued, r.group, r.topic
                )
            })
        }
    }
}

/// Runs `taskbroker cluster status`.
///
/// # Errors
/// The cluster's answer, as one line.
pub async fn cluster(args: ClusterArgs) -> Result<(), CliError> {
    let out = &args.client;
    let admin = out.connect().await?.admin();
    match args.command {
        ClusterCommand::Status => {
            let s = admin.cluster_status().await?;
            out.print(&s, || cluster_text(&s))
        }
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn topics_text(topics: &[TopicMeta]) -> String {
    if topics.is_empty() {
        return "no topics\n".into();
    }
    let mut rows = vec![vec![
        "TOPIC".to_string(),
        "PARTITIONS".into(),
        "REPLICATION".into(),
        "VISIBILITY".into(),
        "MAX ATTEMPTS".into(),
    ]];
    for t in topics {
        rows.push(vec![
            t.name.clone(),
            t.partitions.len().to_string(),
            t.replication_factor.to_string(),
            human_ms(t.visibility_timeout_ms),
            t.max_attempts.to_string(),
        ]);
    }
    table(&rows)
}

fn topic_text(t: &TopicMeta) -> String {
    let mut s = format!(
        "topic:              {}\npartitions:         {}\nreplication:        {}\n\
         visibility timeout: {}\nmax attempts:       {}\nretention:          {}\n\
         dead-letter topic:  {}\n\n",
        t.name,
        t.partitions.len(),
        t.replication_factor,
        human_ms(t.visibility_timeout_ms),
        t.max_attempts,
        t.retention_ms.map_or_else(|| "-".into(), human_ms),
        opt(t.dead_letter_topic.as_ref()),
    );
    let mut rows = vec![vec![
        "PARTITION".to_string(),
        "LEADER".into(),
        "REPLICAS".into(),
    ]];
    for p in &t.partitions {
        rows.push(vec![
            p.partition.to_string(),
            opt(p.leader),
            ids(&p.replicas),
        ]);
    }
    s.push_str(&table(&rows));
    s
}

fn group_text(g: &GroupDescription) -> String {
    let mode = match g.mode {
        GroupMode::Queue => "queue",
        GroupMode::Stream => "stream",
    };
    let mut s = format!("group {} on topic {} ({mode} mode)\n\n", g.group, g.topic);
    let mut rows = vec![vec![
        "PARTITION".to_string(),
        "READY".into(),
        "DELAYED".into(),
        "IN FLIGHT".into(),
        "ACKED".into(),
        "DEAD LETTERS".into(),
        "LAG".into(),
        "COMMITTED".into(),
        "HIGH WATERMARK".into(),
    ]];
    let mut total = [0u64; 6];
    for p in &g.partitions {
        for (t, v) in total.iter_mut().zip([
            p.ready,
            p.delayed,
            p.in_flight,
            p.acked_total,
            p.dead_letters,
            p.lag,
        ]) {
            *t += v;
        }
        rows.push(vec![
            p.partition.to_string(),
            p.ready.to_string(),
            p.delayed.to_string(),
            p.in_flight.to_string(),
            p.acked_total.to_string(),
            p.dead_letters.to_string(),
            p.lag.to_string(),
            opt(p.committed_offset),
            p.high_watermark.to_string(),
        ]);
    }
    let mut last = vec!["total".to_string()];
    last.extend(total.iter().map(u64::to_string));
    rows.push(last);
    s.push_str(&table(&rows));
    s
}

fn cluster_text(s: &ClusterStatus) -> String {
    let m = &s.meta;
    let mut out = format!(
        "metadata leader: {}\nmetadata version: {}\n\n",
        opt(m.controller),
        m.version
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "ADDRESS".into(),
        "HTTP".into(),
        "ROLE".into(),
        "LEADS".into(),
    ]];
    for n in &m.nodes {
        let leads = m
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.leader == Some(n.id))
            .count();
        rows.push(vec![
            n.id.to_string(),
            n.addr.clone(),
            opt(n.http_addr.as_ref()),
            if m.controller == Some(n.id) {
                "metadata leader".into()
            } else {
                "-".into()
            },
            format!("{leads} partitions"),
        ]);
    }
    out.push_str(&table(&rows));
    if !m.topics.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "TOPIC".to_string(),
            "PARTITION".into(),
            "LEADER".into(),
            "REPLICAS".into(),
        ]];
        for t in &m.topics {
            for p in &t.partitions {
                rows.push(vec![
                    t.name.clone(),
                    p.partition.to_string(),
                    opt(p.leader),
                    ids(&p.replicas),
                ]);
            }
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    if s.lagging_replicas.is_empty() {
        out.push_str("lagging replicas: none\n");
    } else {
        let mut rows = vec![vec![
            "LAGGING TOPIC".to_string(),
            "PARTITION".into(),
            "NODE".into(),
            "ENTRIES BEHIND".into(),
        ]];
        for (t, p, n, behind) in &s.lagging_replicas {
            rows.push(vec![
                t.clone(),
                p.to_string(),
                n.to_string(),
                behind.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}
