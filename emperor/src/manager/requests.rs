//! The answers to control requests (status, restart, suspend, resume,
//! notify, purge, spec, shutdown).

use super::*;

impl Manager {
    pub(super) fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let answer = match req {
            Request::Status => {
                Response::ok(serde_json::to_value(self.status()).unwrap_or_default())
            }
            Request::Shutdown => {
                tracing::info!("shutdown requested: stopping every vassal");
                self.shutdown_reply = Some(reply);
                self.continue_shutdown();
                return;
            }
            Request::Restart { name } => self.with_vassal(&name, |m, n| {
                let group = m.suspended_group(n);
                let v = m.vassals.get_mut(n).expect("present");
                let ctx = lifecycle::Ctx {
                    throttle: &m.cfg.throttle,
                    suspended_group: group.as_ref(),
                };
                let fx = v.life.restart(n, &ctx)?;
                m.apply(n, fx);
                Ok(serde_json::json!("restarting"))
            }),
            Request::Suspend { name } => self.with_vassal(&name, |m, n| m.freeze(n, true)),
            Request::Resume { name } => self.with_vassal(&name, |m, n| m.freeze(n, false)),
            Request::Notify { name, message } => {
                self.with_vassal(&name, |m, n| m.notify(n, &message))
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

    pub(super) fn with_vassal(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Manager, &Name) -> Result<serde_json::Value, String>,
    ) -> Response {
        let found = name
            .parse::<Name>()
            .ok()
            .filter(|n| self.vassals.contains_key(n));
        match found {
            Some(n) => match f(self, &n) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e),
            },
            None => match name
                .parse::<Name>()
                .ok()
                .and_then(|n| self.rejected.get(&n).cloned())
            {
                Some(why) => Response::err(format!("{name} is not running: {why}")),
                None => Response::err(format!("no vassal named {name:?}")),
            },
        }
    }

    pub(super) fn freeze(
        &mut self,
        name: &Name,
        frozen: bool,
    ) -> Result<serde_json::Value, String> {
        let group = self.suspended_group(name);
        let v = &self.vassals[name];
        v.life.may_freeze(name, frozen, group.as_ref())?;
        let is_group = matches!(v.file, VassalFile::Group(_));
        let cg = if is_group {
            self.cfg.layout.group_cgroup(name)
        } else {
            self.cgroup_of(name, v)
        };
        self.tree.freeze(&cg, frozen).map_err(|e| e.to_string())?;
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
        Ok(serde_json::json!(if frozen {
            "suspended"
        } else {
            "running"
        }))
    }

    /// Stores a message in the vassal's notifications. The write is made by
    /// the vassal binary running as the tenant, so a link planted in the home
    /// can lead it nowhere the tenant could not write anyway.
    pub(super) fn notify(&self, name: &Name, message: &str) -> Result<serde_json::Value, String> {
        if message.is_empty() || message.len() > 1000 || message.contains(['\n', '\r', '\0']) {
            return Err("a message is one line of at most 1000 bytes".into());
        }
        let v = &self.vassals[name];
        let uid = v
            .uid
            .or_else(|| self.uids.users.get(v.file.user(name).as_str()).copied())
            .ok_or("no uid allocated yet")?;
        // Written by the tenant's own vassal binary, as the tenant, inside the
        // site's mount namespace: a symlink in the home resolves in the
        // container, never to a path of the host.
        let init = v
            .init
            .as_ref()
            .ok_or("the site is not running; notifications are stored from inside it")?;
        let mut cmd = std::process::Command::new(crate::spec::VASSAL_INSIDE);
        cmd.args(["notify", "admin", message]).env_clear().env(
            "HOME",
            model::layout::inside::home(v.file.user(name).as_str()),
        );
        init.pidfd.run_inside(&mut cmd, uid);
        let out = cmd
            .output()
            .map_err(|e| format!("running the vassal binary: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        tracing::info!(vassal = %name, "notification stored");
        Ok(serde_json::json!("stored"))
    }
}
