//! Connecting and shaping the keyspace: the consistency levels, the
//! replication map, creating the keyspace and schema, the message tables'
//! TTL.

use super::*;

/// Parses a consistency name (`local_quorum`, `QUORUM`, `local-one`, ...).
pub fn parse_consistency(name: &str) -> Result<Consistency> {
    Ok(
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            _ => {
                return Err(StoreError::Backend(format!(
                    "scylla: unknown consistency {name:?}; expected one of one, two, three, \
                     quorum, local_quorum, each_quorum, all, local_one"
                )));
            }
        },
    )
}

/// The serial consistency of lightweight transactions for `consistency`:
/// confined to the local data centre when the data consistency is.
pub fn serial_consistency(consistency: Consistency) -> SerialConsistency {
    match consistency {
        Consistency::LocalOne | Consistency::LocalQuorum => SerialConsistency::LocalSerial,
        _ => SerialConsistency::Serial,
    }
}

/// The CQL replication map for `3` (SimpleStrategy) or `dc1:3,dc2:2`
/// (NetworkTopologyStrategy).
pub fn replication_map(spec: &str) -> Result<String> {
    let bad = |why: &str| {
        StoreError::Backend(format!(
            "scylla: bad replication {spec:?} ({why}); expected a factor such as 3 \
             or data centres such as dc1:3,dc2:2"
        ))
    };
    let factor = |s: &str| match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad("a factor must be a positive integer")),
    };
    let spec_trimmed = spec.trim();
    if !spec_trimmed.contains(':') {
        let rf = factor(spec_trimmed)?;
        return Ok(format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
        ));
    }
    let mut dcs = Vec::new();
    for item in spec_trimmed.split(',') {
        let (dc, rf) = item.split_once(':').ok_or_else(|| bad("dc:factor"))?;
        let dc = dc.trim();
        if dc.is_empty()
            || !dc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad("a data centre name is letters, digits, _, - and ."));
        }
        dcs.push(format!("'{dc}': {}", factor(rf)?));
    }
    Ok(format!(
        "{{'class': 'NetworkTopologyStrategy', {}}}",
        dcs.join(", ")
    ))
}

/// Keyspace names are used unquoted in DDL: a letter, then letters, digits
/// and `_`, at most 48 characters.
pub(super) fn check_keyspace(name: &str) -> Result<()> {
    let ok = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "scylla: bad keyspace name {name:?}: a letter, then letters, digits and _, \
             at most 48 characters"
        )))
    }
}

/// Runs one schema statement (not prepared: it runs once).
pub(super) async fn ddl(session: &Session, statement: String) -> Result<()> {
    session
        .query_unpaged(statement.as_str(), ())
        .await
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("scylla: {statement}: {e}")))
}

/// Sets `default_time_to_live` of the message tables to `ttl` (rounded up
/// to whole seconds; zero keeps messages forever) where it differs, so that
/// an unchanged TTL is not a schema change. Applies to messages written from
/// then on.
pub(super) async fn set_message_ttl(
    session: &Session,
    keyspace: &str,
    ttl: Duration,
) -> Result<()> {
    let seconds = if ttl.is_zero() {
        0
    } else {
        u64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_SECS)
    };
    for table in ["inbox", "group_log"] {
        let failed = |e: &dyn Display| {
            StoreError::Backend(format!("scylla: reading the TTL of {table}: {e}"))
        };
        let current = session
            .query_unpaged(
                "SELECT default_time_to_live FROM system_schema.tables \
                 WHERE keyspace_name = ? AND table_name = ?",
                (keyspace.to_ascii_lowercase(), table),
            )
            .await
            .map_err(|e| failed(&e))?
            .into_rows_result()
            .map_err(|e| failed(&e))?
            .maybe_first_row::<(Option<i32>,)>()
            .map_err(|e| failed(&e))?
            .and_then(|(t,)| t);
        if current.and_then(|t| u64::try_from(t).ok()) != Some(seconds) {
            ddl(
                session,
                format!("ALTER TABLE {table} WITH default_time_to_live = {seconds}"),
            )
            .await?;
        }
    }
    Ok(())
}

impl Inner {
    pub(super) async fn connect(
        options: &ScyllaOptions,
        consistency: Consistency,
        replication: Option<String>,
    ) -> Result<Inner> {
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial_consistency(consistency)))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "scylla: connecting to {}: {e}",
                    options.nodes.join(",")
                ))
            })?;
        let keyspace = options.keyspace.clone();
        if let Some(replication) = replication {
            ddl(
                &session,
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
                ),
            )
            .await?;
        }
        session
            .use_keyspace(keyspace.as_str(), false)
            .await
            .map_err(|e| StoreError::Backend(format!("scylla: keyspace {keyspace}: {e}")))?;
        if options.init_schema {
            for (file, text) in chat_schema::cql::FILES {
                for statement in chat_schema::cql::statements(text) {
                    ddl(&session, statement).await.map_err(|e| match e {
                        StoreError::Backend(m) => StoreError::Backend(format!("{m} (in {file})")),
                        other => other,
                    })?;
                }
            }
            set_message_ttl(&session, &keyspace, options.message_ttl).await?;
        }
        let st = Statements::prepare(&session, consistency).await?;
        Ok(Inner {
            session: Arc::new(session),
            st: Arc::new(st),
            keyspace,
            message_ttl: options.message_ttl,
            history_ttl: history_ttl(options.history_retention),
            tag: None,
            clock_ms: 0,
            counter: 0,
            last_timestamp: 0,
            user_ids: IdBlock {
                kind: "user",
                next: 0,
                end: 0,
            },
            group_ids: IdBlock {
                kind: "group",
                next: 0,
                end: 0,
            },
            in_flight: Vec::new(),
            undo: Vec::new(),
            cursors: HashMap::new(),
            leases: HashMap::new(),
            created_users: Vec::new(),
            member_lists: HashMap::new(),
            names: HashMap::new(),
        })
    }
}
