//! Starting one instance of a process: its command, environment, working
//! directory and log, in its own process group.

use super::*;

impl Supervisor {
    pub(super) fn login_env(&self) -> Vec<(String, String)> {
        let home = self.cfg.home.display().to_string();
        let user = std::env::var("USER").unwrap_or_default();
        vec![
            ("HOME".into(), home),
            ("USER".into(), user.clone()),
            ("LOGNAME".into(), user),
            (
                "SHELL".into(),
                std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            ),
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            (
                "LANG".into(),
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            ),
        ]
    }

    /// Starts one instance of a process; `socket` is the socket it is to
    /// listen on (put in place of `{socket}` and in `$SOCKET`). Returns its pid.
    pub(super) fn launch(
        &self,
        spec: &Process,
        name: &Name,
        socket: Option<&str>,
    ) -> Result<i32, String> {
        let f = &spec.file;
        let workdir = match &f.workdir {
            Some(w) => self.cfg.home.join(w),
            None => self.cfg.home.clone(),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(model::layout::home::log(&self.cfg.home, name.as_str()));
        let (out, err) = match log.and_then(|l| Ok((l.try_clone()?, l))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        // Where the instance listens: the socket's path, or for `tcp:PORT`
        // that port of the site's own address.
        let path = socket.map(|s| match model::process::tcp_port(s) {
            Some(port) => format!(
                "{}:{port}",
                self.cfg.address.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
            ),
            None => self.cfg.sockets.join(s).display().to_string(),
        });
        let fill = |a: &String| match &path {
            Some(p) => a.replace(model::process::SOCKET_PLACEHOLDER, p),
            None => a.clone(),
        };
        let mut cmd = Command::new(fill(&f.command[0]));
        cmd.args(f.command[1..].iter().map(fill))
            .current_dir(&workdir)
            .env_clear()
            .envs(self.login_env())
            .envs(path.iter().map(|p| ("SOCKET", p)))
            .envs(f.env.iter().map(|(k, v)| (k, fill(v))))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a stop signal reaches what it forked too.
            .process_group(0);
        crate::spawn::reset_signals(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {:?}: {e}", f.command[0]))?;
        let pid = child.id() as i32;
        // The child is reaped by `reap`, not through `child`.
        drop(child);
        // A tenant's process is a likelier OOM victim than the init:
        // raising a score needs no privilege.
        let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "300");
        Ok(pid)
    }
}
