//! [`Admin`]: topics, groups and cluster status. Any node answers; writes are forwarded to the
//! metadata leader by the node.

use std::time::Duration;

use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::proto::{ClusterStatus, GroupDescription, TopicMeta, TopicSpec};

/// Administration of a cluster; from [`Client::admin`].
///
/// # Example
/// ```no_run
/// use taskbroker_client::{Client, TopicSpec};
///
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let admin = Client::connect(["127.0.0.1:7070"]).await?.admin();
/// let spec = TopicSpec { partitions: Some(4), max_attempts: Some(3), ..TopicSpec::default() };
/// let topic = admin.create_topic("emails", spec).await?;
/// println!("{} has {} partitions", topic.name, topic.partitions.len());
/// let group = admin.describe_group("emails", "senders").await?;
/// for p in &group.partitions {
///     println!("partition {}: {} ready, {} in flight", p.partition, p.ready, p.in_flight);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Self {
        Admin { client }
    }

    /// Creates a topic (idempotent with the same settings).
    ///
    /// # Errors
    /// [`Error::TopicConflict`] if it exists with other settings, [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// a.create_topic("t", taskbroker_client::TopicSpec::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_topic(&self, name: &str, spec: TopicSpec) -> Result<TopicMeta> {
        let meta = self
            .client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (n, s) = (name.to_string(), spec.clone());
                async move { c.create_topic(ctx, n, s).await }
            })
            .await?;
        // Routing for the new topic (leaders may take a moment to be elected).
        let _ = self.client.refresh_metadata(vec![name.to_string()]).await;
        Ok(meta)
    }

    /// Every topic.
    ///
    /// # Errors
    /// The failure to reach the cluster.
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// let topics = a.list_topics().await?;
    /// # let _ = topics; Ok(()) }
    /// ```
    pub async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        let meta = self
            .client
            .call(Route::Any, Duration::ZERO, |c, ctx| async move {
                c.metadata(ctx, Vec::new()).await
            })
            .await?;
        Ok(meta.topics)
    }

    /// One topic.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// let t = a.describe_topic("emails").await?;
    /// # let _ = t; Ok(()) }
    /// ```
    pub async fn describe_topic(&self, name: &str) -> Result<TopicMeta> {
        let meta = self
            .client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let n = vec![name.to_string()];
                async move { c.metadata(ctx, n).await }
            })
            .await?;
        meta.topics
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_string(),
            })
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// a.delete_topic("old").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let n = name.to_string();
                async move { c.delete_topic(ctx, n).await }
            })
            .await
    }

    /// Adds `count` partitions to a topic. Keys hash over the new count from then on.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// a.add_partitions("emails", 4).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicMeta> {
        let meta = self
            .client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let n = name.to_string();
                async move { c.add_partitions(ctx, n, count).await }
            })
            .await?;
        let _ = self.client.refresh_metadata(vec![name.to_string()]).await;
        Ok(meta)
    }

    /// A group's state per partition: ready, delayed, in flight, acked, dead letters, lag.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownGroup`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// let g = a.describe_group("emails", "senders").await?;
    /// # let _ = g; Ok(()) }
    /// ```
    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<GroupDescription> {
        self.client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (t, g) = (topic.to_string(), group.to_string());
                async move { c.describe_group(ctx, t, g).await }
            })
            .await
    }

    /// Moves a group's dead letters back to ready; returns how many.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownGroup`].
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// let n = a.requeue_dead_letters("emails", "senders").await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn requeue_dead_letters(&self, topic: &str, group: &str) -> Result<u64> {
        self.client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (t, g) = (topic.to_string(), group.to_string());
                async move { c.requeue_dead_letters(ctx, t, g).await }
            })
            .await
    }

    /// Nodes, the metadata leader, partition leaders and lagging replicas.
    ///
    /// # Errors
    /// The failure to reach the cluster.
    ///
    /// ```no_run
    /// # async fn demo(a: taskbroker_client::Admin) -> Result<(), taskbroker_client::Error> {
    /// let status = a.cluster_status().await?;
    /// println!("{} nodes", status.meta.nodes.len());
    /// # Ok(()) }
    /// ```
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.client
            .call(Route::Any, Duration::ZERO, |c, ctx| async move {
                c.cluster_status(ctx).await
            })
            .await
    }
}
