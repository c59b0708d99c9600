//! Session claims and node leases: claiming a user's one session (a
//! lightweight transaction, taking over a claim whose node's lease is
//! over), the live nodes, lease renewal and end, the expired nodes and
//! releasing what they hold.

use super::*;

impl Inner {
    /// Which of `nodes` hold a live lease now.
    pub(super) async fn live_nodes<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a String>,
    ) -> Result<HashSet<String>> {
        let mut unknown: Vec<&String> = nodes
            .into_iter()
            .filter(|n| !self.leases.contains_key(*n))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            self.settle(LEASES).await?;
            let this = &*self;
            let ends: Vec<(String, Option<i64>)> = stream::iter(unknown)
                .map(|node| async move {
                    let end = this
                        .read_one::<(Option<i64>,)>(&this.st.lease_get, (node.as_str(),))
                        .await?
                        .and_then(|(end,)| end);
                    Ok::<_, StoreError>((node.clone(), end))
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            self.leases.extend(ends);
        }
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        Ok(self
            .leases
            .iter()
            .filter(|(_, end)| end.is_some_and(|end| end > now))
            .map(|(node, _)| node.clone())
            .collect())
    }

    pub(super) async fn is_live(&mut self, node: &String) -> Result<bool> {
        Ok(self.live_nodes([node]).await?.contains(node))
    }

    /// The claim of each user: `(node, epoch)`, if any.
    pub(super) async fn claims(&self, users: &[UserId]) -> Result<Vec<Option<(String, i64)>>> {
        stream::iter(users)
            .map(|&user| async move {
                let Some(k) = key(user) else {
                    return Ok(None);
                };
                let row = self
                    .read_one::<(Option<String>, Option<i64>)>(&self.st.claim_get, (k,))
                    .await?;
                Ok(match row {
                    Some((Some(node), Some(epoch))) => Some((node, epoch)),
                    _ => None,
                })
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// The node serving each user: the holder of their claim, while its lease
    /// is live.
    pub(super) async fn serving_nodes(&mut self, users: &[UserId]) -> Result<Vec<Option<String>>> {
        let claims = self.claims(users).await?;
        let live = self
            .live_nodes(claims.iter().flatten().map(|(node, _)| node))
            .await?;
        Ok(claims
            .into_iter()
            .map(|c| c.map(|(node, _)| node).filter(|node| live.contains(node)))
            .collect())
    }

    pub(super) async fn online(&mut self, users: &[UserId]) -> Result<Vec<bool>> {
        Ok(self
            .serving_nodes(users)
            .await?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    pub(super) async fn claim_session(
        &mut self,
        user: UserId,
        node: &str,
        epoch: u64,
    ) -> Result<()> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let st = Arc::clone(&self.st);
        let k = key(user).ok_or(StoreError::UnknownUser(user))?;
        // Stored as the same 64 bits, so every u64 round-trips.
        let epoch = epoch as i64;
        let mut current = self.claims(&[user]).await?.pop().flatten();
        // Registered before the transactions, for one that fails without an
        // answer; taken back when the claim is refused.
        self.undo.push(Undo {
            statement: st.claim_release.clone(),
            values: Box::new((k, node.to_owned(), epoch)),
            conditional: true,
        });
        for _ in 0..CAS_ATTEMPTS {
            let cas = match &current {
                Some((holder, held)) => {
                    if self.is_live(holder).await? {
                        self.undo.pop();
                        return Err(StoreError::AlreadyOnline(user));
                    }
                    self.lwt(&st.claim_takeover, (node, epoch, k, holder.as_str(), *held))
                        .await?
                }
                None => self.lwt(&st.claim_insert, (k, node, epoch)).await?,
            };
            if cas.applied {
                if let Some((holder, _)) = current
                    && holder != node
                {
                    self.write(BY_NODE, &st.by_node_delete, Box::new((holder, k)), None);
                }
                self.write(
                    BY_NODE,
                    &st.by_node_insert,
                    Box::new((node.to_owned(), k)),
                    Some((&st.by_node_delete, Box::new((node.to_owned(), k)))),
                );
                self.write(
                    NODES,
                    &st.node_register,
                    Box::new((NODES_BUCKET, node.to_owned())),
                    None,
                );
                return Ok(());
            }
            current = cas.text("node").zip(cas.bigint("epoch"));
        }
        Err(StoreError::Backend(format!(
            "scylla: the session of user {user} is still contended after {CAS_ATTEMPTS} attempts"
        )))
    }

    pub(super) async fn session_node(&mut self, user: UserId) -> Result<Option<String>> {
        Ok(self.serving_nodes(&[user]).await?.pop().flatten())
    }

    pub(super) fn renew_lease(&mut self, node: &str, ttl: Duration) {
        let st = Arc::clone(&self.st);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let end = i64::try_from(now_ms().saturating_add(ttl_ms)).unwrap_or(i64::MAX);
        let seconds = ttl_ms.div_ceil(1000).clamp(1, MAX_TTL_SECS);
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.leases.insert(node.to_owned(), Some(end));
        self.write(
            LEASES,
            &st.lease_set,
            Box::new((node.to_owned(), end, seconds)),
            None,
        );
        self.write(
            NODES,
            &st.node_register,
            Box::new((NODES_BUCKET, node.to_owned())),
            None,
        );
    }

    pub(super) fn end_lease(&mut self, node: &str) {
        let st = Arc::clone(&self.st);
        self.leases.insert(node.to_owned(), None);
        self.write(LEASES, &st.lease_end, Box::new((node.to_owned(),)), None);
    }

    /// Dead nodes that hold no claim are also struck off `cluster_nodes`
    /// (a node registers again with its next renewal).
    pub(super) async fn expired_nodes(&mut self) -> Result<Vec<String>> {
        let st = Arc::clone(&self.st);
        self.settle(NODES | BY_NODE).await?;
        let nodes: Vec<String> = self
            .read_all::<(String,)>(&st.node_list, (NODES_BUCKET,))
            .await?
            .into_iter()
            .map(|(node,)| node)
            .collect();
        let live = self.live_nodes(&nodes).await?;
        let this = &*self;
        let dead: Vec<(String, bool)> =
            stream::iter(nodes.into_iter().filter(|n| !live.contains(n)))
                .map(|node| async move {
                    let claims = this
                        .read_one::<(i64,)>(&this.st.by_node_any, (node.as_str(),))
                        .await?;
                    Ok::<_, StoreError>((node, claims.is_some()))
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
        let mut expired = Vec::new();
        for (node, holds_claims) in dead {
            if holds_claims {
                expired.push(node);
            } else {
                self.write(NODES, &st.node_forget, Box::new((NODES_BUCKET, node)), None);
            }
        }
        expired.sort_unstable();
        Ok(expired)
    }

    pub(super) async fn release_session(
        &mut self,
        user: UserId,
        node: &str,
        epoch: u64,
    ) -> Result<bool> {
        let Some(k) = key(user) else {
            return Ok(false);
        };
        let st = Arc::clone(&self.st);
        let released = self
            .lwt(&st.claim_release, (k, node, epoch as i64))
            .await?
            .applied;
        if released {
            self.write(
                BY_NODE,
                &st.by_node_delete,
                Box::new((node.to_owned(), k)),
                None,
            );
        }
        Ok(released)
    }

    pub(super) async fn release_node(&mut self, node: &str) -> Result<Vec<UserId>> {
        let st = Arc::clone(&self.st);
        self.settle(BY_NODE).await?;
        let listed: Vec<(i64,)> = self.read_all(&st.by_node_list, (node,)).await?;
        let this = &*self;
        let outcomes: Vec<(i64, bool)> = stream::iter(listed)
            .map(|(k,)| async move {
                let cas = this.lwt(&this.st.claim_release_node, (k, node)).await?;
                Ok::<_, StoreError>((k, cas.applied))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut released = Vec::new();
        for (k, applied) in outcomes {
            self.write(
                BY_NODE,
                &st.by_node_delete,
                Box::new((node.to_owned(), k)),
                None,
            );
            if applied {
                released.push(id_of(k));
            }
        }
        if !self.is_live(&node.to_owned()).await? {
            self.write(
                NODES,
                &st.node_forget,
                Box::new((NODES_BUCKET, node.to_owned())),
                None,
            );
        }
        released.sort_unstable();
        Ok(released)
    }

    // ---- friends ----
}
