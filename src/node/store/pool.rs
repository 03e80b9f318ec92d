//! Read connections for the HTTP handlers: a pool (r2d2), so that concurrent reads do not
//! queue behind one connection, and a connection the server has closed is replaced instead of
//! failing every read after it. SQLite runs in WAL mode (see [`Store::connect`]), so readers
//! neither wait for the applier nor hold it up.

use std::time::Duration;

use diesel::r2d2::{ManageConnection, Pool, PooledConnection};

use super::{Store, StoreError};

/// How long a read waits for a free connection before it fails.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens [`Store`]s on one database URL for the pool.
#[derive(Debug)]
pub struct Connector {
    url: String,
}

impl ManageConnection for Connector {
    type Connection = Store;
    type Error = StoreError;

    fn connect(&self) -> Result<Store, StoreError> {
        Store::connect(&self.url)
    }

    fn is_valid(&self, store: &mut Store) -> Result<(), StoreError> {
        store.ping()
    }

    fn has_broken(&self, store: &mut Store) -> bool {
        store.is_broken()
    }
}

/// The read connections of one node.
#[derive(Clone)]
pub struct ReadPool {
    pool: Pool<Connector>,
    embedded: bool,
}

impl ReadPool {
    /// Up to `size` connections to `url` (a database [`Store::open`] has migrated), one opened
    /// at once so that a wrong URL fails here.
    pub fn open(url: &str, size: u32) -> Result<ReadPool, StoreError> {
        let pool = Pool::builder()
            .max_size(size.max(1))
            .min_idle(Some(1))
            // A broken connection shows as an error of the read that used it, and is then
            // dropped (`has_broken`); a test query on every checkout would cost each read a round trip.
            .test_on_check_out(false)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .build(Connector { url: url.to_string() })
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let embedded = pool.get().map_err(|e| StoreError::Pool(e.to_string()))?.backend() == "sqlite";
        Ok(ReadPool { pool, embedded })
    }

    /// True for SQLite: the database is a file in this process, not a server.
    pub fn is_embedded(&self) -> bool {
        self.embedded
    }

    /// A free connection, waiting for one up to a few seconds.
    pub fn get(&self) -> Result<PooledConnection<Connector>, StoreError> {
        self.pool.get().map_err(|e| StoreError::Pool(e.to_string()))
    }
}
