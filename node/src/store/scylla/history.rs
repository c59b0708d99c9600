//! Messages: `append` (inbox, group log and history tables), the backlog a
//! user has not acknowledged (`pending`, `ack`), history pages, read marks,
//! readers of a group message and unread counts.

use super::*;

/// The TTL of history rows for a retention, in seconds: rounded up, at
/// least 1, at most ScyllaDB's limit; 0 (no TTL) for `None`.
pub(super) fn history_ttl(retention: Option<Duration>) -> i32 {
    retention.map_or(0, |d| {
        let seconds = u64::try_from(d.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_SECS);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    })
}

/// The `direct_history` partition of the conversation between two users:
/// the lower id first, so that both directions share it.
pub(super) fn pair(a: i64, b: i64) -> (i64, i64) {
    (a.min(b), a.max(b))
}

/// How many rows a read of a history page asks for (one more than
/// `limit`, to tell whether older ones exist), as the value bound to
/// `LIMIT ?` and the page size to fetch them in.
pub(super) fn page_request(limit: usize) -> (usize, i32, i32) {
    let want = limit.saturating_add(1);
    let bound = i32::try_from(want).unwrap_or(i32::MAX);
    let page = i32::try_from(want.min(HISTORY_PAGE_ROWS)).unwrap_or(1);
    (want, bound, page)
}

/// The page of at most `limit` of `messages` (newest first, read with
/// [`page_request`]), and whether older ones exist.
pub(super) fn page_of(
    mut messages: Vec<StoredMessage>,
    limit: usize,
    read_up_to: MessageId,
) -> HistoryPage {
    let more = messages.len() > limit;
    messages.truncate(limit);
    HistoryPage {
        messages,
        more,
        read_up_to,
    }
}

/// Unread direct messages per sender among `received` (`id, sender_id` of
/// `direct_received`, the newest `UNREAD_CAP + 1` messages to `user`):
/// those from someone else above `user`'s read position in the
/// conversation with them (`marks`, by `(kind, target)`), at most
/// [`UNREAD_CAP`] each.
pub(super) fn direct_unread(
    user: i64,
    received: &[(i64, Option<i64>)],
    marks: &HashMap<(i32, i64), i64>,
) -> BTreeMap<i64, u64> {
    let mut counts = BTreeMap::new();
    for &(id, sender) in received {
        let Some(sender) = sender.filter(|&s| s != user) else {
            continue;
        };
        if id > marks.get(&(KIND_DIRECT, sender)).copied().unwrap_or(0) {
            let count = counts.entry(sender).or_insert(0);
            *count = (*count + 1).min(UNREAD_CAP);
        }
    }
    counts
}

pub(super) fn message(row: MessageRow, recipient_id: UserId, group_id: GroupId) -> StoredMessage {
    let (id, sender_id, sender_name, time_ms, body) = row;
    StoredMessage {
        id: id_of(id),
        sender_id: sender_id.map_or(0, id_of),
        sender_name: sender_name.unwrap_or_default(),
        recipient_id,
        group_id,
        // Stored as the same 64 bits, so every u64 round-trips.
        time_ms: time_ms.unwrap_or(0) as u64,
        text: body.unwrap_or_default(),
    }
}

impl Inner {
    pub(super) async fn append(&mut self, m: &NewMessage) -> Result<StoredMessage> {
        let st = Arc::clone(&self.st);
        let (recipient_id, group_id) = match m.target {
            Target::User(recipient) => {
                if self.user_name(recipient).await?.is_none() {
                    return Err(StoreError::UnknownUser(recipient));
                }
                if m.sender_id != recipient && self.user_name(m.sender_id).await?.is_none() {
                    return Err(StoreError::UnknownUser(m.sender_id));
                }
                (recipient, 0)
            }
            Target::Group(group) => {
                if !self.member_ids(group).await?.contains(&m.sender_id) {
                    return Err(if self.group_exists(group).await? {
                        StoreError::NotAMember {
                            user: m.sender_id,
                            group,
                        }
                    } else {
                        StoreError::UnknownGroup(group)
                    });
                }
                (0, group)
            }
        };
        let s = key(m.sender_id).ok_or(StoreError::UnknownUser(m.sender_id))?;
        let id = self.next_message_id().await?;
        let i = bound(id);
        // Stored as the same 64 bits, so every u64 round-trips.
        let time_ms = m.time_ms as i64;
        let ttl = self.history_ttl;
        if let Some(r) = key(recipient_id).filter(|_| group_id == 0) {
            self.write(
                MESSAGES,
                &st.inbox_insert,
                Box::new((r, i, s, m.sender_name.clone(), time_ms, m.text.clone())),
                Some((&st.inbox_delete, Box::new((r, i)))),
            );
            let (lo, hi) = pair(s, r);
            self.write(
                MESSAGES,
                &st.direct_history_insert,
                Box::new((
                    lo,
                    hi,
                    i,
                    s,
                    m.sender_name.clone(),
                    time_ms,
                    m.text.clone(),
                    ttl,
                )),
                Some((&st.direct_history_delete, Box::new((lo, hi, i)))),
            );
            // A message to oneself is never unread.
            if r != s {
                self.write(
                    MESSAGES,
                    &st.received_insert,
                    Box::new((r, i, s, ttl)),
                    Some((&st.received_delete, Box::new((r, i)))),
                );
            }
        } else {
            let g = key(group_id).ok_or(StoreError::UnknownGroup(group_id))?;
            let day = bucket_of(id);
            self.write(
                MESSAGES,
                &st.log_insert,
                Box::new((g, day, i, s, m.sender_name.clone(), time_ms, m.text.clone())),
                Some((&st.log_delete, Box::new((g, day, i)))),
            );
            self.write(
                MESSAGES,
                &st.group_history_insert,
                Box::new((g, i, s, m.sender_name.clone(), time_ms, m.text.clone(), ttl)),
                Some((&st.group_history_delete, Box::new((g, i)))),
            );
        }
        Ok(StoredMessage {
            id,
            sender_id: m.sender_id,
            sender_name: m.sender_name.clone(),
            recipient_id,
            group_id,
            time_ms: m.time_ms,
            text: m.text.clone(),
        })
    }

    /// Messages of one group above `after`, not sent by `reader`, oldest
    /// first, at most `limit`: day by day from `after`'s day (or the oldest
    /// day the TTL keeps) to today, with slack for writers ahead of this
    /// clock.
    pub(super) async fn group_backlog(
        &self,
        g: i64,
        after: i64,
        reader: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        let mut first = day_of_ms(id_ms(id_of(after)));
        if !self.message_ttl.is_zero() {
            let ttl = u64::try_from(self.message_ttl.as_millis()).unwrap_or(u64::MAX);
            first = first.max(day_of_ms(now.saturating_sub(ttl)).saturating_sub(1));
        }
        let last = day_of_ms(now.max(self.clock_ms) + CLOCK_SLACK_MS);
        let page = i32::try_from(limit.saturating_add(32).clamp(64, 5000)).unwrap_or(5000);
        let mut out = Vec::new();
        for day in first..=last {
            let rows = self
                .read_rows::<MessageRow>(
                    &self.st.log_read,
                    (g, day, after),
                    Some(page),
                    limit - out.len(),
                    |row| row.1 != Some(reader),
                )
                .await?;
            out.extend(rows.into_iter().map(|row| message(row, 0, id_of(g))));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn pending(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let cursor = self.cursor_of(user).await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        let from = cursor.max(bound(after));
        self.settle(MESSAGES | GROUPS).await?;
        let lim = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut out: Vec<StoredMessage> = self
            .read_rows::<MessageRow>(&self.st.inbox_read, (u, from, lim), None, limit, |_| true)
            .await?
            .into_iter()
            .map(|row| message(row, user, 0))
            .collect();
        let groups: Vec<(i64, Option<i64>)> = self.read_all(&self.st.membership_list, (u,)).await?;
        let this = &*self;
        // A row without `joined_after` is no membership (see "Leaving and
        // deleting groups").
        let backlogs: Vec<Vec<StoredMessage>> = stream::iter(groups)
            .filter_map(|(g, joined_after)| future::ready(joined_after.map(|j| (g, j))))
            .map(|(g, joined_after)| this.group_backlog(g, from.max(joined_after), u, limit))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        out.extend(backlogs.into_iter().flatten());
        out.sort_unstable_by_key(|m| m.id);
        out.truncate(limit);
        if let Some(newest) = out.last() {
            self.observe(newest.id);
        }
        Ok(out)
    }

    pub(super) async fn ack(&mut self, user: UserId, up_to: MessageId) -> Result<()> {
        let cursor = self.cursor_of(user).await?;
        let up_to = bound(up_to);
        if up_to > cursor {
            self.cursors.insert(user, up_to);
            self.observe(id_of(up_to));
        }
        Ok(())
    }

    // ---- history and read positions ----

    /// Keys of `user` and `peer` for their direct conversation: `UnknownUser`
    /// if either does not exist (`user` checked first).
    pub(super) async fn direct_keys(&mut self, user: UserId, peer: UserId) -> Result<(i64, i64)> {
        for id in [user, peer] {
            if self.user_name(id).await?.is_none() {
                return Err(StoreError::UnknownUser(id));
            }
        }
        match (key(user), key(peer)) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => Err(StoreError::UnknownUser(peer)),
        }
    }

    /// Keys of `group` and `user` and the id `user` joined after, from their
    /// `user_groups` row (the one `pending` reads too). Without one:
    /// `UnknownGroup` if the group does not exist, else `NotAMember`.
    pub(super) async fn membership_keys(
        &mut self,
        group: GroupId,
        user: UserId,
    ) -> Result<(i64, i64, i64)> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        if let Some(u) = key(user) {
            self.settle(GROUPS).await?;
            let row = self
                .read_one::<MembershipRow>(&self.st.membership_get, (u, g))
                .await?;
            if let Some((Some(joined_after), _)) = row {
                return Ok((g, u, joined_after));
            }
        }
        Err(if self.group_exists(group).await? {
            StoreError::NotAMember { user, group }
        } else {
            StoreError::UnknownGroup(group)
        })
    }

    /// One range read of the conversation's history partition (direct: the
    /// pair's `direct_history`, with the peer's read mark read alongside;
    /// group: `group_history` above the user's `joined_after`).
    pub(super) async fn history(
        &mut self,
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let before = before.map_or(i64::MAX, bound);
        let (want, lim, page) = page_request(limit);
        let out = match conversation {
            Conversation::Direct(peer) => {
                let (u, p) = self.direct_keys(user, peer).await?;
                let (lo, hi) = pair(u, p);
                self.settle(MESSAGES | READS).await?;
                let st = &self.st;
                let (rows, mark) = future::try_join(
                    self.read_rows::<MessageRow>(
                        &st.direct_history_page,
                        (lo, hi, before, lim),
                        Some(page),
                        want,
                        |_| true,
                    ),
                    self.read_one::<(Option<i64>,)>(&st.read_mark_get, (p, KIND_DIRECT, u)),
                )
                .await?;
                let messages = rows
                    .into_iter()
                    .map(|row| {
                        let recipient = if row.1 == Some(u) { peer } else { user };
                        message(row, recipient, 0)
                    })
                    .collect();
                let read_up_to = mark.and_then(|(up_to,)| up_to).map_or(0, id_of);
                page_of(messages, limit, read_up_to)
            }
            Conversation::Group(group) => {
                let (g, _, joined_after) = self.membership_keys(group, user).await?;
                let mut messages = Vec::new();
                if before > joined_after.saturating_add(1) {
                    self.settle(MESSAGES).await?;
                    messages = self
                        .read_rows::<MessageRow>(
                            &self.st.group_history_page,
                            (g, joined_after, before, lim),
                            Some(page),
                            want,
                            |_| true,
                        )
                        .await?
                        .into_iter()
                        .map(|row| message(row, 0, group))
                        .collect();
                }
                page_of(messages, limit, 0)
            }
        };
        if let Some(newest) = out.messages.first() {
            self.observe(newest.id);
        }
        Ok(out)
    }

    /// Reads the conversation's newest id and `user`'s read position at
    /// once (for a group also the copy in `group_reads`), then writes the
    /// position (both copies for a group) if it moves. A group's
    /// `group_reads` copy found behind `read_marks` (a crash between the
    /// two writes) is brought up to the position even when the position
    /// does not move.
    pub(super) async fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool> {
        let st = Arc::clone(&self.st);
        let (kind, u, target, group_copy) = match conversation {
            Conversation::Direct(peer) => {
                let (u, p) = self.direct_keys(user, peer).await?;
                (KIND_DIRECT, u, p, None)
            }
            Conversation::Group(group) => {
                let (g, u, _) = self.membership_keys(group, user).await?;
                (KIND_GROUP, u, g, Some(g))
            }
        };
        self.settle(MESSAGES | READS).await?;
        let newest = async {
            match group_copy {
                Some(g) => {
                    self.read_one::<(i64,)>(&st.group_history_newest, (g,))
                        .await
                }
                None => {
                    let (lo, hi) = pair(u, target);
                    self.read_one::<(i64,)>(&st.direct_history_newest, (lo, hi))
                        .await
                }
            }
        };
        let copy = async {
            match group_copy {
                Some(g) => {
                    self.read_one::<(Option<i64>,)>(&st.group_read_get, (g, u))
                        .await
                }
                None => Ok(None),
            }
        };
        let (newest, mark, copy) = future::try_join3(
            newest,
            self.read_one::<(Option<i64>,)>(&st.read_mark_get, (u, kind, target)),
            copy,
        )
        .await?;
        let newest = newest.map_or(0, |(id,)| id_of(id));
        if up_to > newest {
            return Err(StoreError::BeyondNewest { up_to, newest });
        }
        let to = bound(up_to);
        let was = mark.and_then(|(v,)| v);
        let position = to.max(was.unwrap_or(0));
        if let Some(g) = group_copy {
            let copied = copy.and_then(|(v,)| v);
            if position > copied.unwrap_or(0) {
                let (undo_statement, undo): (&PreparedStatement, Values) = match copied {
                    Some(copied) => (&st.group_read_set, Box::new((copied, g, u))),
                    None => (&st.group_read_delete, Box::new((g, u))),
                };
                self.write(
                    READS,
                    &st.group_read_set,
                    Box::new((position, g, u)),
                    Some((undo_statement, undo)),
                );
            }
        }
        if to <= was.unwrap_or(0) {
            return Ok(false);
        }
        let (undo_statement, undo): (&PreparedStatement, Values) = match was {
            Some(was) => (&st.read_mark_set, Box::new((was, u, kind, target))),
            None => (&st.read_mark_delete, Box::new((u, kind, target))),
        };
        self.write(
            READS,
            &st.read_mark_set,
            Box::new((to, u, kind, target)),
            Some((undo_statement, undo)),
        );
        Ok(true)
    }

    /// The head, the member list and the `group_reads` partition of the
    /// group, read at once.
    pub(super) async fn readers(
        &mut self,
        user: UserId,
        group: GroupId,
        message: MessageId,
    ) -> Result<(u64, u64)> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        self.settle(GROUPS | READS).await?;
        let st = &self.st;
        let (head, rows, reads) = future::try_join3(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_all::<MemberRow>(&st.member_list, (g,)),
            self.read_all::<(i64, Option<i64>)>(&st.group_read_list, (g,)),
        )
        .await?;
        let state = GroupState {
            head: head.filter(|(name, _, _)| name.is_some()),
            rows,
            membership: None,
        };
        if !state.exists() {
            return Err(StoreError::UnknownGroup(group));
        }
        let members = Self::member_order(state.rows);
        if !key(user).is_some_and(|u| members.iter().any(|row| row.1 == u)) {
            return Err(StoreError::NotAMember { user, group });
        }
        let positions: HashMap<i64, i64> = reads
            .into_iter()
            .filter_map(|(member, up_to)| up_to.map(|up_to| (member, up_to)))
            .collect();
        let message = bound(message);
        let readers = members
            .iter()
            .filter(|row| positions.get(&row.1).copied().unwrap_or(0) >= message)
            .count();
        Ok((readers as u64, members.len() as u64))
    }

    /// `user`'s read marks, the newest `UNREAD_CAP + 1` rows of their
    /// `direct_received` and their memberships at once; then, for every
    /// group at once, the group's history above the read position (or the
    /// join), at most [`UNREAD_SCAN`] rows.
    pub(super) async fn unread(&mut self, user: UserId) -> Result<Vec<Unread>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(MESSAGES | READS | GROUPS).await?;
        let st = &self.st;
        let cap = usize::try_from(UNREAD_CAP).unwrap_or(usize::MAX);
        let newest = i32::try_from(cap + 1).unwrap_or(i32::MAX);
        let (marks, received, memberships) = future::try_join3(
            self.read_all::<(i32, i64, Option<i64>)>(&st.read_mark_list, (u,)),
            self.read_rows::<(i64, Option<i64>)>(
                &st.received_newest,
                (u, newest),
                Some(newest),
                cap + 1,
                |_| true,
            ),
            self.read_all::<(i64, Option<i64>)>(&st.membership_list, (u,)),
        )
        .await?;
        let marks: HashMap<(i32, i64), i64> = marks
            .into_iter()
            .filter_map(|(kind, target, up_to)| up_to.map(|up_to| ((kind, target), up_to)))
            .collect();
        let mut out: Vec<Unread> = direct_unread(u, &received, &marks)
            .into_iter()
            .map(|(peer, count)| Unread {
                conversation: Conversation::Direct(id_of(peer)),
                count,
            })
            .collect();
        // A row without `joined_after` is no membership (see "Leaving and
        // deleting groups").
        let groups: Vec<(i64, i64)> = memberships
            .into_iter()
            .filter_map(|(g, joined_after)| {
                let mark = marks.get(&(KIND_GROUP, g)).copied().unwrap_or(0);
                joined_after.map(|joined_after| (g, joined_after.max(mark)))
            })
            .collect();
        let page = i32::try_from(cap + 1).unwrap_or(i32::MAX);
        let this = &*self;
        let counts: Vec<(i64, usize)> = stream::iter(groups)
            .map(|(g, from)| async move {
                let unread = this
                    .read_rows::<(i64, Option<i64>)>(
                        &this.st.group_history_senders,
                        (g, from, UNREAD_SCAN),
                        Some(page),
                        cap,
                        |row| row.1 != Some(u),
                    )
                    .await?;
                Ok::<_, StoreError>((g, unread.len()))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        out.extend(
            counts
                .into_iter()
                .filter(|&(_, count)| count > 0)
                .map(|(g, count)| Unread {
                    conversation: Conversation::Group(id_of(g)),
                    count: (count as u64).min(UNREAD_CAP),
                }),
        );
        out.sort_unstable_by_key(|unread| unread.conversation);
        Ok(out)
    }
}
