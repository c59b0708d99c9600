//! Id allocation: the id blocks users and groups are handed out from (a
//! compare-and-set on `id_blocks`), message ids `(ms << 22) | (writer << 8)
//! | counter` with the writer tag and the per-handle clock, and the
//! conversions between ids, CQL keys and `group_log` buckets.

use super::*;

/// The key of a user or group id: ids above `i64::MAX` cannot exist.
pub(super) fn key(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

/// A message-id bound: ids above `i64::MAX` do not exist, so clamping keeps
/// a comparison's meaning.
pub(super) fn bound(id: MessageId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Ids read back are positive.
pub(super) fn id_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The millisecond (from the id epoch) of a message id.
pub(super) fn id_ms(id: u64) -> u64 {
    id >> MS_SHIFT
}

/// The `group_log` day of a millisecond (from the id epoch).
pub(super) fn day_of_ms(ms: u64) -> i32 {
    i32::try_from(ms / DAY_MS).unwrap_or(i32::MAX)
}

/// The `group_log` day of a message id.
pub fn bucket_of(id: MessageId) -> i32 {
    day_of_ms(id_ms(id))
}

/// A message id from its parts.
pub fn message_id(ms: u64, tag: u64, counter: u64) -> MessageId {
    (ms << MS_SHIFT) | ((tag % TAGS) << TAG_SHIFT) | (counter % COUNTER_LIMIT)
}

impl Inner {
    pub(super) async fn next_message_id(&mut self) -> Result<MessageId> {
        let tag = match self.tag {
            Some(tag) => tag,
            None => {
                let (writer, _) = self.reserve("writer", 1).await?;
                *self.tag.insert(id_of(writer) % TAGS)
            }
        };
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        if now > self.clock_ms {
            self.clock_ms = now;
            self.counter = 0;
        }
        if self.counter >= COUNTER_LIMIT {
            self.clock_ms += 1;
            self.counter = 0;
        }
        let id = message_id(self.clock_ms, tag, self.counter);
        self.counter += 1;
        Ok(id)
    }

    /// Keeps this handle's next message ids above `id`, an id seen elsewhere.
    pub(super) fn observe(&mut self, id: MessageId) {
        let ms = id_ms(id);
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        if ms >= self.clock_ms && ms <= now + OBSERVE_LIMIT_MS {
            self.clock_ms = ms + 1;
            self.counter = 0;
        }
    }

    /// Reserves `size` ids of `kind`: returns `(first, end)`.
    pub(super) async fn reserve(&self, kind: &str, size: i64) -> Result<(i64, i64)> {
        let st = &self.st;
        let mut seen: Option<i64> = self
            .read_one::<(Option<i64>,)>(&st.id_block_get, (kind,))
            .await?
            .and_then(|(n,)| n);
        for _ in 0..CAS_ATTEMPTS {
            let cas = match seen {
                None => self.lwt(&st.id_block_init, (kind, 1 + size)).await?,
                Some(n) => self.lwt(&st.id_block_cas, (n + size, kind, n)).await?,
            };
            if cas.applied {
                let first = seen.unwrap_or(1);
                return Ok((first, first + size));
            }
            seen = cas.bigint("next_id");
        }
        Err(StoreError::Backend(format!(
            "scylla: id block of {kind:?} still contended after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// The next user id, without using it up.
    pub(super) async fn peek_user_id(&mut self) -> Result<i64> {
        if self.user_ids.next >= self.user_ids.end {
            let (next, end) = self.reserve(self.user_ids.kind, ID_BLOCK).await?;
            self.user_ids.next = next;
            self.user_ids.end = end;
        }
        Ok(self.user_ids.next)
    }

    pub(super) async fn take_group_id(&mut self) -> Result<i64> {
        if self.group_ids.next >= self.group_ids.end {
            let (next, end) = self.reserve(self.group_ids.kind, ID_BLOCK).await?;
            self.group_ids.next = next;
            self.group_ids.end = end;
        }
        let id = self.group_ids.next;
        self.group_ids.next += 1;
        Ok(id)
    }

    // ---- requests ----
}
