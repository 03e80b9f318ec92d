//! Databases on a PostgreSQL or MySQL/MariaDB server, for nodes to be given by URL.
//!
//! The admin URLs are `LABCTL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `LABCTL_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). A server that does not answer fails its tests under
//! `CI=true` and skips them, loudly, otherwise.

use diesel::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "mysql")]
    Mysql,
}

impl Server {
    pub fn admin_url(self) -> String {
        let (var, default) = match self {
            #[cfg(feature = "postgres")]
            Server::Postgres => ("LABCTL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            #[cfg(feature = "mysql")]
            Server::Mysql => ("LABCTL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        std::env::var(var).unwrap_or_else(|_| default.into())
    }

    /// Runs `sql` through an admin connection.
    pub fn admin(self, sql: &str) -> Result<(), String> {
        fn run<C: Connection>(url: &str, sql: &str) -> Result<(), String> {
            let mut conn = C::establish(url).map_err(|e| e.to_string())?;
            conn.batch_execute(sql).map_err(|e| e.to_string())
        }
        match self {
            #[cfg(feature = "postgres")]
            Server::Postgres => run::<diesel::PgConnection>(&self.admin_url(), sql),
            #[cfg(feature = "mysql")]
            Server::Mysql => run::<diesel::MysqlConnection>(&self.admin_url(), sql),
        }
    }
}

/// A fresh database, dropped afterwards.
pub struct SharedDb {
    pub server: Server,
    pub name: String,
    pub url: String,
}

impl SharedDb {
    /// None, loudly, when the server does not answer (a failure under `CI=true`).
    pub fn new(server: Server) -> Option<SharedDb> {
        if let Err(e) = server.admin("SELECT 1") {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{server:?} is needed (CI=true): {e}");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("\n!!! SKIPPED: {server:?} does not answer ({e})\n").as_bytes(),
            );
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("labctl_shared_{}_{n}", std::process::id());
        let _ = server.admin(&format!("DROP DATABASE IF EXISTS {name}"));
        // In UTF8 whatever the server's default, which a node requires of PostgreSQL.
        let options = match server {
            #[cfg(feature = "postgres")]
            Server::Postgres => " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
            #[cfg(feature = "mysql")]
            Server::Mysql => "",
        };
        server.admin(&format!("CREATE DATABASE {name}{options}")).unwrap();
        let base = server.admin_url().rsplit_once('/').unwrap().0.to_string();
        Some(SharedDb { server, url: format!("{base}/{name}"), name })
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        // FORCE: PostgreSQL refuses to drop a database a connection still uses.
        let force = if self.url.starts_with("postgres") { " WITH (FORCE)" } else { "" };
        let _ = self.server.admin(&format!("DROP DATABASE IF EXISTS {}{force}", self.name));
    }
}
