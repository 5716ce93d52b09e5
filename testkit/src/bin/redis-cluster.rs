//! `redis-cluster`: starts the Redis Cluster a test run shares (three masters, three
//! replicas, on free loopback ports), prints `SB_REDIS_CLUSTER=host:port,…`
//! on stdout, and stops it when its standard input closes (or when it is killed).
//!
//! ```text
//! coproc CLUSTER { target/debug/redis-cluster; }
//! read -r line <&"${CLUSTER[0]}" && export "$line"
//! cargo test …                      # every RedisCluster::shared() is this one
//! exec {CLUSTER[1]}>&-              # stops it
//! ```

use std::io::{Read, Write};

use switchboard_testkit::{CLUSTER_ENV, RedisCluster};

fn main() {
    let cluster = RedisCluster::start();
    cluster.stop_with_process();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{CLUSTER_ENV}={}", cluster.addresses());
    let _ = out.flush();
    drop(out);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
}
