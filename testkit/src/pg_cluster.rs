//! A throwaway PostgreSQL cluster of a test's own, on a free port, that the test may
//! stop and start again (the machine's server is never touched).

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster in a temporary directory. Stopped (fast) on drop.
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("initdb under /usr/lib/postgresql/*/bin (scripts/test.sh installs it)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    /// Creates and starts a cluster (trust auth, user `postgres`, fsync off).
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::free_port();
        let cluster = PgCluster { bin, dir, port };
        if is_root() {
            // initdb refuses to run as root.
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .expect("chown");
            assert!(chown.success());
        }
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        cluster.up();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            started.status.success(),
            "PostgreSQL did not start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    /// Stops the server at once (open connections are closed).
    pub fn down(&self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            stopped.status.success(),
            "PostgreSQL did not stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
}

impl PgCluster {
    /// Freezes every process of the server (SIGSTOP): what a stalled disk, a frozen
    /// VM or a network path that drops packets looks like to a client — connections
    /// stay open and nothing answers.
    pub fn freeze(&self) {
        assert!(self.signal("-STOP"), "could not freeze PostgreSQL");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        assert!(self.signal("-CONT"), "could not thaw PostgreSQL");
    }

    /// Sends `signal` to the postmaster first (so it forks no new backend
    /// meanwhile), then to every process it started; false if there was none.
    fn signal(&self, signal: &str) -> bool {
        let Ok(pid_file) = std::fs::read_to_string(self.data().join("postmaster.pid")) else {
            return false;
        };
        let Some(postmaster) = pid_file.lines().next().map(str::trim) else {
            return false;
        };
        let sent = Command::new("kill")
            .args([signal, postmaster])
            .status()
            .is_ok_and(|s| s.success());
        // pkill exits 1 when there is no child: not an error.
        let _ = Command::new("pkill")
            .args([signal, "-P", postmaster])
            .status();
        sent
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // A frozen server would not stop.
        self.signal("-CONT");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
