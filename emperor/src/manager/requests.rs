//! The answers to control requests (status, restart, suspend, resume,
//! notify, purge, spec, shutdown).

use super::*;

impl Manager {
    pub(super) fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match req {
            Request::Status => return self.answer_status(reply),
            Request::Metrics => Response::ok(serde_json::Value::String(self.metrics())),
            Request::Cluster => return self.cluster_view(reply),
            Request::Move { name, host } => return self.move_site(&name, &host, reply),
            Request::Put {
                name,
                text,
                group: None,
            } if self.cluster_writes.is_some() => {
                return self.cluster_write(&name, Some(text), reply)
            }
            Request::Delete { name, group: None } if self.cluster_writes.is_some() => {
                return self.cluster_write(&name, None, reply)
            }
            Request::Put { name, text, group } => self.put(&name, &text, group.as_deref()),
            Request::Delete { name, group } => self.delete(&name, group.as_deref()),
            Request::Get { name } => self.get(&name),
            Request::Shutdown => {
                tracing::info!("shutdown requested: stopping every vassal");
                self.shutdown_reply = Some(reply);
                self.continue_shutdown();
                return;
            }
            Request::Restart { name } => self.with_vassal(&name, |m, n| {
                let fx = m
                    .decide(n, |life, ctx| life.restart(n, ctx))
                    .expect("present")
                    .map_err(|e| e.to_string())?;
                m.apply(n, fx);
                Ok(serde_json::json!("restarting"))
            }),
            // The freezer and the vassal binary may take seconds: they run
            // off the loop and answer from there.
            Request::Suspend { name } => return self.freeze(&name, true, reply),
            Request::Resume { name } => return self.freeze(&name, false, reply),
            Request::Notify {
                name,
                message,
                from,
            } => {
                let kind = match from.as_deref() {
                    None | Some("admin") => "admin",
                    Some("reseller") => "reseller",
                    Some(other) => {
                        let _ = reply.send(Response::err(format!(
                            "{other:?}: a message is from admin or reseller"
                        )));
                        return;
                    }
                };
                if message.is_empty()
                    || message.len() > 1000
                    || message.contains(['\n', '\r', '\0'])
                {
                    let why = "a message is one line of at most 1000 bytes";
                    let _ = reply.send(Response::err(why.to_owned()));
                    return;
                }
                let args = ["notify", kind, message.as_str()];
                // Told on the event streams once stored.
                let note = self.find(&name).ok().map(|n| Note {
                    group: self.told.get(&n).and_then(|c| c.group.clone()),
                    vassal: n.to_string(),
                    kind: kind.to_owned(),
                    message: message.clone(),
                });
                let events = self.events.clone();
                return self.inside(&name, &args, reply, move |_| {
                    if let Some(note) = note {
                        let _ = events.send(Told::Notification(note));
                    }
                    Ok(serde_json::json!("stored"))
                });
            }
            Request::Notifications {
                name,
                unread,
                limit,
            } => {
                let n = limit.unwrap_or(50).min(1000).to_string();
                let mut args = vec!["notifications", "--json", "-n", n.as_str()];
                if unread {
                    args.push("--unread");
                }
                return self.inside(&name, &args, reply, |out| {
                    serde_json::from_slice(out).map_err(|e| format!("the site's answer: {e}"))
                });
            }
            Request::Subscriptions { name } => {
                let name = match self.find(&name) {
                    Ok(n) => n,
                    Err(answer) => {
                        let _ = reply.send(answer);
                        return;
                    }
                };
                let socket = self
                    .cfg
                    .layout
                    .router_dir()
                    .join(model::layout::names::SUBSCRIBE_SOCKET);
                tokio::spawn(async move {
                    let answer = match crate::routes::of(&socket, name.as_str()).await {
                        Ok(routes) => {
                            Response::ok(serde_json::to_value(routes).unwrap_or_default())
                        }
                        Err(why) => Response::err(why),
                    };
                    let _ = reply.send(answer);
                });
                return;
            }
            Request::NotificationsRead { name, upto } => {
                let upto = upto.map(|u| u.to_string());
                let mut args = vec!["notifications", "read"];
                args.extend(upto.as_deref());
                return self.inside(&name, &args, reply, |out| {
                    let upto = String::from_utf8_lossy(out).trim().parse::<i64>();
                    let upto = upto.map_err(|_| "the site's answer is not a number".to_owned())?;
                    Ok(serde_json::json!({ "upto": upto }))
                });
            }
            Request::Purge { name } => match name.parse::<Name>() {
                Ok(n) => match self.purge(&n) {
                    Ok(0) => Response::err(format!("no archived home of {n}")),
                    Ok(count) => Response::ok(serde_json::json!(format!(
                        "purged {count} archived home(s) of {n}"
                    ))),
                    Err(e) => Response::err(format!("purging {n}: {e}")),
                },
                Err(e) => Response::err(e.to_string()),
            },
            Request::Bundle {
                name,
                dir,
                copy_home,
            } => return self.bundle(&name, dir, copy_home, reply),
            Request::Spec { name } => self.with_vassal(&name, |m, n| {
                let v = &m.vassals[n];
                let uid = match v.uid {
                    Some(u) => u,
                    None => m
                        .uids
                        .users
                        .get(v.file.user(n).as_str())
                        .copied()
                        .ok_or("no uid allocated yet")?,
                };
                let s = spec::build(&m.input(n, &v.file, uid)).map_err(|e| e.to_string())?;
                serde_json::to_value(&s).map_err(|e| e.to_string())
            }),
        };
        let _ = reply.send(answer);
    }

    /// Writes a standalone bundle of a vassal's container (copying a home
    /// can take long: off the loop, answered from there).
    fn bundle(
        &mut self,
        name: &str,
        dir: String,
        copy_home: bool,
        reply: oneshot::Sender<Response>,
    ) {
        let prepared = self.find(name).and_then(|n| {
            let v = &self.vassals[&n];
            let uid = v
                .uid
                .or_else(|| self.uids.users.get(v.file.user(&n).as_str()).copied())
                .ok_or_else(|| Response::err("no uid allocated yet"))?;
            let inp = self.input(&n, &v.file, uid);
            let spec = spec::build(&inp).map_err(|e| Response::err(e.to_string()))?;
            let skeleton = spec::skeleton(&inp, &spec);
            let home = inp.home();
            let home_inside = model::layout::inside::home(inp.user().as_str());
            Ok((spec, skeleton, uid, home, home_inside))
        });
        let (spec, skeleton, uid, home, home_inside) = match prepared {
            Ok(p) => p,
            Err(answer) => {
                let _ = reply.send(answer);
                return;
            }
        };
        tokio::task::spawn_blocking(move || {
            let dir = std::path::PathBuf::from(dir);
            let src = crate::bundle::Source {
                spec,
                skeleton: &skeleton,
                uid,
                home_inside,
                copy_home: copy_home.then_some(home),
            };
            let answer = match crate::bundle::write(src, &dir) {
                Ok(()) => Response::ok(serde_json::json!(format!(
                    "bundle written to {}; run it with `crun run --bundle {} ID`",
                    dir.display(),
                    dir.display()
                ))),
                Err(e) => Response::err(format!("writing the bundle to {}: {e}", dir.display())),
            };
            let _ = reply.send(answer);
        });
    }

    /// A vassal file written through the API, into the admin directory or
    /// (a reseller's socket) the group's drop directory: validated, written
    /// atomically, judged by a scan at once; refused, it is put back as it
    /// was (a new one removed) and the reason is the answer. A drop
    /// directory is the reseller's: written relative to its descriptor,
    /// never through a link planted there, and the file is the reseller's.
    fn put(&mut self, name: &str, text: &str, group: Option<&str>) -> Response {
        let n: Name = match name.parse() {
            Ok(n) => n,
            Err(e) => return Response::err(format!("vassal name refused: {e}")),
        };
        let mut file = match VassalFile::parse(&n, text) {
            Ok(f) => f,
            Err(e) => return Response::err(e.to_string()),
        };
        let place = match self.file_place(group) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        if let (Some(g), VassalFile::Site(s)) = (group, &mut file) {
            // A drop directory's site is its group's, said or not.
            if s.group.is_none() {
                s.group = g.parse().ok();
            }
        }
        let file_name = format!("{n}.toml");
        let before = place.read(&file_name);
        let created = !self.vassals.contains_key(&n);
        if let Err(e) = place.write(&file_name, text.as_bytes()) {
            return Response::err(format!("writing {file_name}: {e}"));
        }
        self.wrote(group, &file_name);
        self.reconcile();
        let took = self.vassals.get(&n).is_some_and(|v| v.file == file);
        if took {
            tracing::info!(vassal = %n, "vassal file written through the API");
            return Response::ok(serde_json::json!({ "name": n.to_string(), "created": created }));
        }
        let why = self
            .rejected
            .get(&n)
            .cloned()
            .or_else(|| self.vassals.get(&n).and_then(|v| v.life.reason.clone()))
            .unwrap_or_else(|| "refused".into());
        let restored = match &before {
            Some(b) => place.write(&file_name, b),
            None => place.remove(&file_name),
        };
        if let Err(e) = restored {
            tracing::error!(vassal = %n, error = %e, "putting the refused file back failed");
        }
        self.wrote(group, &file_name);
        self.reconcile();
        Response::err(why)
    }

    /// The admin's write in cluster mode: validated as a file on its own,
    /// then put into (or deleted from) etcd by the agent; the host the file
    /// names judges it against the others there.
    fn cluster_write(
        &mut self,
        name: &str,
        text: Option<String>,
        reply: oneshot::Sender<Response>,
    ) {
        let Some(writes) = self.cluster_writes.clone() else {
            return;
        };
        let n: Name = match name.parse() {
            Ok(n) => n,
            Err(e) => {
                let _ = reply.send(Response::err(format!("vassal name refused: {e}")));
                return;
            }
        };
        if let Some(t) = &text {
            if let Err(e) = VassalFile::parse(&n, t) {
                let _ = reply.send(Response::err(e.to_string()));
                return;
            }
        }
        let deleting = text.is_none();
        let name = n.clone();
        let ask = |tx| {
            crate::cluster::Ask::Write(crate::cluster::Write {
                name,
                text,
                reply: tx,
            })
        };
        ask_agent(&writes, ask, reply, move |r| match r {
            Ok(_) if deleting => Response::ok(serde_json::json!("removed")),
            Ok(created) => {
                Response::ok(serde_json::json!({ "name": n.to_string(), "created": created }))
            }
            Err(why) => Response::err(why),
        });
    }

    /// Starts a site's move to another host (`emperor move`).
    fn move_site(&mut self, name: &str, host: &str, reply: oneshot::Sender<Response>) {
        let Some(writes) = self.cluster_writes.clone() else {
            let _ = reply.send(Response::err(
                "not in cluster mode (serve --etcd URLS --host NAME)".to_owned(),
            ));
            return;
        };
        let (name, to) = match (name.parse::<Name>(), host.parse::<Name>()) {
            (Ok(n), Ok(h)) => (n, h),
            _ => {
                let _ = reply.send(Response::err(format!(
                    "no such site or host: {name} {host}"
                )));
                return;
            }
        };
        let ask = |tx| crate::cluster::Ask::Move(name, to, tx);
        ask_agent(&writes, ask, reply, |r| match r {
            Ok(m) => Response::ok(serde_json::json!(m)),
            Err(why) => Response::err(why),
        });
    }

    /// A site moving here gets its home made as a start would make it
    /// (a subvolume or a project directory with quotas), empty, for the
    /// copy; its path.
    pub(super) fn prepare_home(&mut self, name: &Name, text: &str) -> Result<PathBuf, String> {
        if self.vassals.contains_key(name) {
            return Err(format!("{name} is already on this host"));
        }
        let file = VassalFile::parse(name, text).map_err(|e| e.to_string())?;
        let login = model::cluster::login_of(name, text)
            .ok_or_else(|| "the file names no login".to_owned())?;
        let uid = *self
            .uids
            .users
            .get(login.as_str())
            .ok_or_else(|| format!("no uid for {login} here yet"))?;
        let inp = self.input(name, &file, uid);
        self.spawner
            .prepare_host(&inp)
            .map_err(|e| format!("preparing its home: {e}"))?;
        Ok(inp.home())
    }

    /// The cluster as this host's agent sees it (`emperor cluster`).
    fn cluster_view(&mut self, reply: oneshot::Sender<Response>) {
        let Some(writes) = self.cluster_writes.clone() else {
            let _ = reply.send(Response::err(
                "not in cluster mode (serve --etcd URLS --host NAME)".to_owned(),
            ));
            return;
        };
        ask_agent(&writes, crate::cluster::Ask::View, reply, Response::ok);
    }

    /// A vassal file removed through the API (the admin directory, or a
    /// group's drop directory).
    fn delete(&mut self, name: &str, group: Option<&str>) -> Response {
        let Ok(n) = name.parse::<Name>() else {
            return Response::err(format!("no vassal named {name:?}"));
        };
        let place = match self.file_place(group) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        match place.remove(&format!("{n}.toml")) {
            Ok(()) => {
                self.wrote(group, &format!("{n}.toml"));
                self.reconcile();
                Response::ok(serde_json::json!("removed"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Response::err(format!("no vassal named {name:?} in that directory"))
            }
            Err(e) => Response::err(format!("removing {n}.toml: {e}")),
        }
    }

    /// The next scan reads `file` of the admin directory or of `group`'s
    /// drop directory, just written here (before the watcher says so).
    fn wrote(&self, group: Option<&str>, file: &str) {
        let dir = match group.map(str::parse::<Name>) {
            None => self.cfg.layout.vassals.clone(),
            Some(Ok(g)) => self.cfg.layout.drop_dir(&g),
            Some(Err(_)) => return,
        };
        if let Some(n) = &self.named {
            n.name(dir.join(file));
        }
    }

    /// Where vassal files written through the API go.
    fn file_place(&self, group: Option<&str>) -> Result<FilePlace, String> {
        let Some(g) = group else {
            return Ok(FilePlace::Admin(self.cfg.layout.vassals.clone()));
        };
        let g: Name = g.parse().map_err(|e| format!("group: {e}"))?;
        let v = self
            .vassals
            .get(&g)
            .filter(|v| matches!(v.file, VassalFile::Group(_)))
            .ok_or_else(|| format!("no group named {g}"))?;
        let owner = v.uid.ok_or("the group has no uid yet")?;
        // The group's home is root's: the path to its drop directory holds
        // no link of the reseller's; what is inside the directory may.
        let dir = sys::fs::open_dir(&self.cfg.layout.drop_dir(&g))
            .map_err(|e| format!("the drop directory: {e}"))?;
        Ok(FilePlace::Drop { dir, owner })
    }

    /// A vassal's status row with its file's text (the admin directory's, or
    /// its group's drop directory's).
    fn get(&self, name: &str) -> Response {
        let Some(mut row) = self
            .status_of(name)
            .and_then(|r| serde_json::to_value(r).ok())
        else {
            return Response::err(format!("no vassal named {name:?}"));
        };
        let l = &self.cfg.layout;
        let mut places = vec![l.vassals.join(format!("{name}.toml"))];
        if let Some(g) = row["group"].as_str().and_then(|g| g.parse::<Name>().ok()) {
            places.push(l.drop_dir(&g).join(format!("{name}.toml")));
        }
        let text = places.iter().find_map(|p| {
            sys::fs::open_dir(p.parent()?)
                .ok()
                .and_then(|d| {
                    sys::fs::read_regular(
                        std::os::fd::AsFd::as_fd(&d),
                        std::path::Path::new(p.file_name()?),
                        64 * 1024,
                    )
                    .ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
        });
        row["file"] = text.map_or(serde_json::Value::Null, serde_json::Value::String);
        Response::ok(row)
    }

    pub(super) fn with_vassal(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Manager, &Name) -> Result<serde_json::Value, String>,
    ) -> Response {
        match self.find(name) {
            Ok(n) => match f(self, &n) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e),
            },
            Err(answer) => answer,
        }
    }

    /// The vassal a request names, or the answer that it has none.
    fn find(&self, name: &str) -> Result<Name, Response> {
        let parsed = name.parse::<Name>().ok();
        if let Some(n) = parsed.clone().filter(|n| self.vassals.contains_key(n)) {
            return Ok(n);
        }
        Err(match parsed.and_then(|n| self.rejected.get(&n).cloned()) {
            Some(why) => Response::err(format!("{name} is not running: {why}")),
            None => Response::err(format!("no vassal named {name:?}")),
        })
    }

    /// `emperor suspend` / `resume`: the freezer (which waits for the
    /// kernel) runs on the blocking pool; `froze` finishes the request.
    fn freeze(&mut self, name: &str, frozen: bool, reply: oneshot::Sender<Response>) {
        let checked = self.find(name).and_then(|n| {
            let group = self.suspended_group(&n);
            let v = &self.vassals[&n];
            v.life
                .may_freeze(&n, frozen, group.as_ref())
                .map_err(|e| Response::err(e.to_string()))?;
            let cg = self.freezer_cgroup(&n, v);
            Ok((n, cg))
        });
        let (name, cg) = match checked {
            Ok(found) => found,
            Err(answer) => {
                let _ = reply.send(answer);
                return;
            }
        };
        let (tree, tx) = (self.tree.clone(), self.tx.clone());
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || tree.freeze(&cg, frozen))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let _ = tx.send(Event::Froze {
                name,
                frozen,
                result,
                reply,
            });
        });
    }

    /// What `suspend` freezes: a group's whole subtree, or the site's cgroup.
    fn freezer_cgroup(&self, name: &Name, v: &Vassal) -> String {
        match v.file {
            VassalFile::Group(_) => self.cfg.layout.group_cgroup(name),
            VassalFile::Site(_) => self.cgroup_of(name, v),
        }
    }

    /// The end of a freeze or thaw: the vassal's state, and its group's sites.
    pub(super) fn froze(
        &mut self,
        name: &Name,
        frozen: bool,
        result: Result<(), String>,
    ) -> Response {
        if let Err(e) = result {
            return Response::err(e);
        }
        let Some(v) = self.vassals.get(name) else {
            return Response::err(format!("{name} is gone"));
        };
        if frozen && (!v.life.running() || v.life.stopping.is_some()) {
            // Stopped meanwhile: a frozen init could not end.
            let cg = self.freezer_cgroup(name, v);
            let tree = self.tree.clone();
            tokio::task::spawn_blocking(move || tree.freeze(&cg, false));
            return Response::err(format!("{name} is stopping"));
        }
        let is_group = matches!(v.file, VassalFile::Group(_));
        self.step(name, lifecycle::Event::Frozen(frozen));
        if is_group {
            if frozen {
                self.suspended_groups.insert(name.clone());
            } else {
                self.suspended_groups.remove(name);
                // Sites frozen on their own stay frozen; the others run again.
                let sites: Vec<Name> = self
                    .vassals
                    .iter()
                    .filter(|(_, s)| s.group() == Some(name))
                    .map(|(n, _)| n.clone())
                    .collect();
                for s in sites {
                    let cg = self.cgroup_of(&s, &self.vassals[&s]);
                    let own_frozen = self.tree.is_frozen(&cg).unwrap_or(false);
                    self.step(&s, lifecycle::Event::GroupResumed { own_frozen });
                }
            }
        }
        tracing::info!(vassal = %name, frozen, "freezer");
        Response::ok(serde_json::json!(if frozen {
            "suspended"
        } else {
            "running"
        }))
    }

    /// Runs the vassal binary with `args` inside the running site, as its
    /// user (notifications live in the tenant's home: a link planted there
    /// leads it nowhere the tenant could not write anyway), off the loop;
    /// `done` makes the answer from what it printed. The tenant can stop or
    /// trace that process: it is killed after 5 s, and its output is read
    /// up to 1 MiB.
    fn inside(
        &self,
        name: &str,
        args: &[&str],
        reply: oneshot::Sender<Response>,
        done: impl FnOnce(&[u8]) -> Result<serde_json::Value, String> + Send + 'static,
    ) {
        let prepared = self
            .find(name)
            .and_then(|n| self.inside_command(&n, args).map_err(Response::err));
        let (name, pidfd, cmd) = match prepared {
            Ok(p) => p,
            Err(answer) => {
                let _ = reply.send(answer);
                return;
            }
        };
        tokio::spawn(async move {
            // The pidfd stays open until the child has joined the namespace.
            let ran = run_bounded(cmd).await;
            drop(pidfd);
            let answer = match ran.and_then(|out| done(&out)) {
                Ok(v) => Response::ok(v),
                Err(why) => {
                    tracing::info!(vassal = %name, error = %why, "inside the site");
                    Response::err(why)
                }
            };
            let _ = reply.send(answer);
        });
    }

    /// The vassal binary inside the site, as the tenant, with `args`.
    fn inside_command(
        &self,
        name: &Name,
        args: &[&str],
    ) -> Result<(Name, Arc<Pidfd>, std::process::Command), String> {
        let v = &self.vassals[name];
        let uid = v
            .uid
            .or_else(|| self.uids.users.get(v.file.user(name).as_str()).copied())
            .ok_or("no uid allocated yet")?;
        // Inside the site's mount namespace: a symlink in the home resolves
        // in the container, never to a path of the host.
        let init = v
            .init
            .as_ref()
            .ok_or("the site is not running; its notifications are reached from inside it")?;
        let mut cmd = std::process::Command::new(crate::spec::VASSAL_INSIDE);
        cmd.args(args).env_clear().env(
            "HOME",
            model::layout::inside::home(v.file.user(name).as_str()),
        );
        init.pidfd.run_inside(&mut cmd, uid);
        Ok((name.clone(), init.pidfd.clone(), cmd))
    }
}

/// How long a command inside a site has.
const INSIDE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The most of a command's output read.
const INSIDE_OUTPUT_MAX: u64 = 1024 * 1024;

/// Runs `cmd` to its end within [`INSIDE_TIMEOUT`] (else it is killed); its
/// output, or the one-line reason it failed.
async fn run_bounded(cmd: std::process::Command) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running the vassal binary: {e}"))?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = out {
                let _ = s.take(INSIDE_OUTPUT_MAX + 1).read_to_end(&mut o).await;
            }
        };
        let read_err = async {
            if let Some(s) = err {
                let _ = s.take(4096).read_to_end(&mut e).await;
            }
        };
        let (_, _, status) = tokio::join!(read_out, read_err, child.wait());
        (o, e, status)
    };
    let (out, err, status) = tokio::time::timeout(INSIDE_TIMEOUT, work)
        .await
        .map_err(|_| "the site's vassal binary did not answer within 5 s".to_owned())?;
    if out.len() as u64 > INSIDE_OUTPUT_MAX {
        return Err("the site's answer is larger than 1 MiB".into());
    }
    let status = status.map_err(|e| format!("waiting for the vassal binary: {e}"))?;
    if !status.success() {
        let why = String::from_utf8_lossy(&err).trim().to_owned();
        return Err(if why.is_empty() {
            format!("the vassal binary failed ({status})")
        } else {
            why
        });
    }
    Ok(out)
}

/// A directory vassal files are written to through the API.
enum FilePlace {
    /// The admin's directory (root's).
    Admin(std::path::PathBuf),
    /// A group's drop directory (the reseller's), by descriptor.
    Drop {
        dir: std::os::fd::OwnedFd,
        owner: u32,
    },
}

impl FilePlace {
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            FilePlace::Admin(d) => std::fs::read(d.join(name)).ok(),
            FilePlace::Drop { dir, .. } => {
                use std::os::fd::AsFd;
                sys::fs::read_regular(dir.as_fd(), std::path::Path::new(name), 64 * 1024).ok()
            }
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            FilePlace::Admin(d) => model::atomic::write(&d.join(name), bytes, 0o644),
            FilePlace::Drop { dir, owner } => {
                use std::os::fd::AsFd;
                sys::fs::replace_in(dir.as_fd(), name, bytes, *owner)
            }
        }
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        match self {
            FilePlace::Admin(d) => std::fs::remove_file(d.join(name)),
            FilePlace::Drop { dir, .. } => {
                use std::os::fd::AsFd;
                sys::fs::remove_in(dir.as_fd(), name)
            }
        }
    }
}

/// Hands `ask` to the cluster's agent and answers the caller from its reply
/// (off the loop), or at once when the agent is busy or gone.
fn ask_agent<T: Send + 'static>(
    agent: &mpsc::Sender<crate::cluster::Ask>,
    ask: impl FnOnce(oneshot::Sender<T>) -> crate::cluster::Ask,
    reply: oneshot::Sender<Response>,
    answer: impl FnOnce(T) -> Response + Send + 'static,
) {
    let (tx, rx) = oneshot::channel();
    if agent.try_send(ask(tx)).is_err() {
        let _ = reply.send(Response::err(
            "the cluster's agent is busy: try again".to_owned(),
        ));
        return;
    }
    tokio::spawn(async move {
        let r = match rx.await {
            Ok(v) => answer(v),
            Err(_) => Response::err("the cluster's agent stopped".to_owned()),
        };
        let _ = reply.send(r);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_and_its_output_bounded() {
        let t = crate::clock::now();
        let mut sleeper = std::process::Command::new("sleep");
        sleeper.arg("30");
        let why = run_bounded(sleeper).await.unwrap_err();
        assert!(why.contains("5 s"), "{why}");
        assert!(
            crate::clock::now().saturating_duration_since(t) < std::time::Duration::from_secs(10)
        );
        let mut flood = std::process::Command::new("sh");
        flood.args(["-c", "head -c 3000000 /dev/zero"]);
        let why = run_bounded(flood).await.unwrap_err();
        assert!(why.contains("1 MiB"), "{why}");
        let mut fails = std::process::Command::new("sh");
        fails.args(["-c", "echo no such site >&2; exit 3"]);
        assert_eq!(run_bounded(fails).await.unwrap_err(), "no such site");
        let mut ok = std::process::Command::new("echo");
        ok.arg("42");
        assert_eq!(run_bounded(ok).await.unwrap(), b"42\n");
    }
}
