//! Connections of the Redis tier to one node or to a cluster, behind one
//! type, so that the tier's calls and scripts are written once. Nothing of
//! redis-rs leaves the `cache` module.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, Value,
};

/// Where the tier connects: one node, or the seed nodes of a cluster.
#[derive(Clone)]
pub(super) enum Backend {
    Single(Client),
    /// Seeds, checked at configuration time; a client is built per
    /// connection, with that connection's timeouts.
    Cluster(Vec<ConnectionInfo>),
}

impl Backend {
    /// Seeds of a cluster: each a Redis URL; all must agree on the
    /// credentials (redis-rs checks).
    pub(super) fn cluster<I, S>(seeds: I) -> RedisResult<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let seeds = seeds
            .into_iter()
            .map(|s| s.as_ref().trim().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        // Checks what a connection would check: at least one seed, one set
        // of credentials, TLS support for `rediss://`.
        ClusterClientBuilder::new(seeds.clone()).build()?;
        Ok(Backend::Cluster(seeds))
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// A connection whose calls time out after `response` (`connect` to
    /// connect); a cluster connection learns the slot map from the first
    /// seed that answers.
    pub(super) async fn connect(&self, connect: Duration, response: Duration) -> RedisResult<Conn> {
        match self {
            Backend::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response)
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
            }
            Backend::Cluster(seeds) => cluster_client(seeds, connect, response)?
                .get_async_connection()
                .await
                .map(Conn::Cluster),
        }
    }

    /// A connection of its own for blocking reads (the purge log's
    /// follower): `response` covers the block.
    pub(super) async fn connect_blocking(
        &self,
        connect: Duration,
        response: Duration,
    ) -> RedisResult<Conn> {
        match self {
            Backend::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Multiplexed)
            }
            Backend::Cluster(_) => self.connect(connect, response).await,
        }
    }
}

fn cluster_client(
    seeds: &[ConnectionInfo],
    connect: Duration,
    response: Duration,
) -> RedisResult<redis::cluster::ClusterClient> {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(connect)
        .response_timeout(response)
        // A MOVED or ASK after a resharding is retried at once; a node that
        // is down is not waited for (redis-rs's default is 16 retries with
        // a growing back-off, far past the tier's call timeout).
        .retries(2)
        .min_retry_wait(1)
        .max_retry_wait(10)
        .build()
}

/// A connection to one node or to a cluster; commands and scripts route
/// by their keys on a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    /// Reconnects by itself (requests).
    Single(ConnectionManager),
    /// One multiplexed connection (the follower's blocking reads).
    Multiplexed(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// The addresses (`host:port`) of the masters, or the one node.
    pub(super) async fn masters(&mut self) -> RedisResult<Vec<Option<(String, u16)>>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        // A PING to every master, answered per address.
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let answers = c.route_command(&redis::cmd("PING"), routing).await?;
        let Value::Map(answers) = answers else {
            return Ok(Vec::new());
        };
        Ok(answers
            .into_iter()
            .filter_map(|(addr, _)| {
                let addr: String = redis::from_redis_value(&addr).ok()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some(Some((host.to_owned(), port.parse().ok()?)))
            })
            .collect())
    }

    /// Runs `cmd` on `node` (from [`Conn::masters`]); keyless commands
    /// such as SCAN need it on a cluster.
    pub(super) async fn on_node<T: redis::FromRedisValue>(
        &mut self,
        node: Option<&(String, u16)>,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Conn::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                redis::from_owned_redis_value(c.route_command(cmd, routing).await?)
            }
            (c, _) => cmd.query_async(c).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
