//! The emulated batch: reads that wait for the writes in flight to their
//! tables, lightweight transactions, writes sent at once with a client
//! timestamp and awaited later, `commit` (cursor moves, then every write in
//! flight) and `rollback` (the compensating undo).

use super::*;

impl Inner {
    pub(super) fn batch_open(&self) -> bool {
        !self.in_flight.is_empty() || !self.undo.is_empty() || !self.cursors.is_empty()
    }

    // ---- clocks and ids ----

    /// A client timestamp for the next write: microseconds, increasing per
    /// handle.
    pub(super) fn timestamp(&mut self) -> i64 {
        self.last_timestamp = now_us().max(self.last_timestamp + 1);
        self.last_timestamp
    }

    pub(super) async fn read_one<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.rows(statement, values)
            .await?
            .maybe_first_row::<R>()
            .map_err(|e| fail(statement, e))
    }

    /// Runs `statement` unpaged and returns its rows (single-row reads and
    /// lightweight transactions).
    pub(super) async fn rows(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryRowsResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| fail(statement, e))?
            .into_rows_result()
            .map_err(|e| fail(statement, e))
    }

    /// Reads rows page by page, keeping those `keep` accepts, until `max`
    /// are kept or the rows run out.
    pub(super) async fn read_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        page_size: Option<i32>,
        max: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut paged = statement.clone();
        if let Some(size) = page_size {
            paged.set_page_size(size.max(1));
        }
        let mut rows = self
            .session
            .execute_iter(paged, values)
            .await
            .map_err(|e| fail(statement, e))?
            .rows_stream::<R>()
            .map_err(|e| fail(statement, e))?;
        let mut out = Vec::new();
        while out.len() < max {
            match rows.try_next().await.map_err(|e| fail(statement, e))? {
                Some(row) if keep(&row) => out.push(row),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn read_all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.read_rows(statement, values, None, usize::MAX, |_| true)
            .await
    }

    /// Runs a lightweight transaction.
    pub(super) async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Cas> {
        let rows = self.rows(statement, values).await?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(|e| fail(statement, e))?;
        let values = row.map(|r| r.columns).unwrap_or_default();
        let columns: Vec<(String, Option<CqlValue>)> = names
            .into_iter()
            .zip(values.into_iter().chain(std::iter::repeat(None)))
            .collect();
        let applied = match columns.iter().find(|(n, _)| n == "[applied]") {
            Some((_, Some(CqlValue::Boolean(applied)))) => *applied,
            _ => return Err(fail(statement, "no [applied] column in the answer")),
        };
        Ok(Cas { applied, columns })
    }

    /// Sends a write now (see "How a batch flows"); `undo` rolls it back.
    pub(super) fn write(
        &mut self,
        tables: u16,
        statement: &PreparedStatement,
        values: Values,
        undo: Option<(&PreparedStatement, Values)>,
    ) {
        let mut statement = statement.clone();
        statement.set_timestamp(Some(self.timestamp()));
        let session = Arc::clone(&self.session);
        let task = tokio::spawn(async move {
            session
                .execute_unpaged(&statement, &values)
                .await
                .map(drop)
                .map_err(|e| fail(&statement, e))
        });
        self.in_flight.push(InFlight { tables, task });
        if let Some((statement, values)) = undo {
            self.undo.push(Undo {
                statement: statement.clone(),
                values,
                conditional: false,
            });
        }
    }

    /// Waits for the writes in flight that touch `tables`.
    pub(super) async fn settle(&mut self, tables: u16) -> Result<()> {
        if !self.in_flight.iter().any(|w| w.tables & tables != 0) {
            return Ok(());
        }
        let (now, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|w| w.tables & tables != 0);
        self.in_flight = later;
        let mut first_error = None;
        for done in future::join_all(now.into_iter().map(|w| w.task)).await {
            let outcome = done.unwrap_or_else(|e| {
                Err(StoreError::Backend(format!(
                    "scylla: a write task failed: {e}"
                )))
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(super) fn end_batch(&mut self) {
        self.undo.clear();
        self.cursors.clear();
        self.leases.clear();
        self.created_users.clear();
        self.member_lists.clear();
    }

    pub(super) async fn commit(&mut self) -> Result<()> {
        let st = Arc::clone(&self.st);
        for (user, cursor) in std::mem::take(&mut self.cursors) {
            if let Some(k) = key(user) {
                self.write(CURSORS, &st.cursor_set, Box::new((cursor, k)), None);
            }
        }
        // On failure the compensations stay for the caller's rollback.
        self.settle(ALL).await?;
        self.end_batch();
        Ok(())
    }

    pub(super) async fn rollback(&mut self) {
        self.cursors.clear();
        if let Err(e) = self.settle(ALL).await {
            tracing::debug!(error = %e, "a write of a rolled-back batch failed");
        }
        for id in std::mem::take(&mut self.created_users) {
            self.names.remove(&id);
        }
        let undo = std::mem::take(&mut self.undo);
        let mut undoing = Vec::with_capacity(undo.len());
        for Undo {
            mut statement,
            values,
            conditional,
        } in undo.into_iter().rev()
        {
            if !conditional {
                statement.set_timestamp(Some(self.timestamp()));
            }
            let session = Arc::clone(&self.session);
            undoing.push(async move {
                session
                    .execute_unpaged(&statement, &values)
                    .await
                    .map_err(|e| fail(&statement, e))
            });
        }
        for failed in future::join_all(undoing)
            .await
            .into_iter()
            .filter_map(|r| r.err())
        {
            tracing::warn!(error = %failed, "rolling back a batch left a write in place");
        }
        self.end_batch();
    }

    // ---- users ----
}
