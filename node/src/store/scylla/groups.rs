//! Groups and memberships: member lists (read once per batch), group heads,
//! creating, joining, leaving and removing members, the creator's hand-over
//! and the deletion of a group its last member left.

use super::*;

impl Inner {
    /// Whether `user` has a `user_groups` row for `group` (a row without
    /// `joined_after` is the leftover of a role update, not a membership).
    pub(super) async fn is_member(&mut self, group: GroupId, user: UserId) -> Result<bool> {
        let (Some(g), Some(u)) = (key(group), key(user)) else {
            return Ok(false);
        };
        self.settle(GROUPS).await?;
        Ok(self
            .read_one::<MembershipRow>(&self.st.membership_get, (u, g))
            .await?
            .is_some_and(|(joined_after, _)| joined_after.is_some()))
    }

    /// Whether `group` exists: a head with a name and at least one member
    /// (a head left with no member is a deleted group, see "Leaving and
    /// deleting groups").
    pub(super) async fn group_exists(&mut self, group: GroupId) -> Result<bool> {
        let Some(g) = key(group) else {
            return Ok(false);
        };
        self.settle(GROUPS).await?;
        let st = &self.st;
        let (head, member) = future::try_join(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_rows::<MemberRow>(&st.member_list, (g,), Some(16), 1, |row| row.2.is_some()),
        )
        .await?;
        Ok(head.is_some_and(|(name, _, _)| name.is_some()) && !member.is_empty())
    }

    /// Members of a group from its `group_members` rows (joining order): each
    /// once (their earliest row), rows without a name dropped (a role update
    /// that landed after its member left), the creator first as
    /// `ROLE_CREATOR` and everyone else as `ROLE_MEMBER`. The creator is the
    /// earliest member whose row says so or, if none does (a handover that a
    /// crash cut short), the earliest member.
    pub(super) fn member_order(mut rows: Vec<MemberRow>) -> Vec<MemberRow> {
        let mut seen = HashSet::new();
        rows.retain(|(_, user, name, _)| name.is_some() && seen.insert(*user));
        let creator = rows
            .iter()
            .position(|(_, _, _, role)| *role == Some(ROLE_CREATOR))
            .unwrap_or(0);
        if let Some(first) = rows.get_mut(..=creator) {
            first.rotate_right(1);
        }
        for (i, row) in rows.iter_mut().enumerate() {
            row.3 = Some(if i == 0 { ROLE_CREATOR } else { ROLE_MEMBER });
        }
        rows
    }

    /// Ids of the members of `group`, creator first then by joining order;
    /// read once per batch and reused until this handle writes to the
    /// group. Empty for no such group.
    pub(super) async fn member_ids(&mut self, group: GroupId) -> Result<&[UserId]> {
        if !self.member_lists.contains_key(&group) {
            let mut ids = Vec::new();
            if let Some(g) = key(group) {
                self.settle(GROUPS).await?;
                let rows = self
                    .read_all::<MemberRow>(&self.st.member_list, (g,))
                    .await?;
                ids = Self::member_order(rows)
                    .into_iter()
                    .map(|(_, user, _, _)| id_of(user))
                    .collect();
            }
            self.member_lists.insert(group, ids);
        }
        Ok(self.member_lists.get(&group).map_or(&[], Vec::as_slice))
    }

    /// Name, description and members of each group (`None`: no such group).
    pub(super) async fn group_rows(&self, groups: &[i64]) -> Result<Vec<Option<GroupRow>>> {
        stream::iter(groups)
            .map(|&g| async move {
                let head = self.read_one::<HeadRow>(&self.st.group_get, (g,)).await?;
                let Some((Some(name), description, _)) = head else {
                    return Ok(None);
                };
                let members = Self::member_order(
                    self.read_all::<MemberRow>(&self.st.member_list, (g,))
                        .await?,
                );
                if members.is_empty() {
                    // A deleted group whose head a crash left behind.
                    return Ok(None);
                }
                Ok(Some((name, description.unwrap_or_default(), members)))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// Full descriptions of groups, with every member's online state.
    pub(super) async fn group_infos(&mut self, groups: &[i64]) -> Result<Vec<Option<GroupInfo>>> {
        self.settle(GROUPS).await?;
        let rows = self.group_rows(groups).await?;
        let users: Vec<UserId> = rows
            .iter()
            .flatten()
            .flat_map(|(_, _, members)| members.iter().map(|m| id_of(m.1)))
            .collect();
        let mut online = self.online(&users).await?.into_iter();
        Ok(groups
            .iter()
            .zip(rows)
            .map(|(&g, row)| {
                row.map(|(name, description, members)| GroupInfo {
                    id: id_of(g),
                    name,
                    description,
                    members: members
                        .into_iter()
                        .map(|(_, user, name, role)| Member {
                            id: id_of(user),
                            name: name.unwrap_or_default(),
                            online: online.next().unwrap_or(false),
                            role: if role == Some(ROLE_CREATOR) {
                                Role::Creator
                            } else {
                                Role::Normal
                            },
                        })
                        .collect(),
                })
            })
            .collect())
    }

    /// Writes the rows of a membership.
    pub(super) async fn add_member(
        &mut self,
        g: i64,
        u: i64,
        name: String,
        role: i32,
    ) -> Result<()> {
        let st = Arc::clone(&self.st);
        let joined_after = bound(self.next_message_id().await?);
        self.write(
            GROUPS,
            &st.member_insert,
            Box::new((g, joined_after, u, name, role)),
            Some((&st.member_delete, Box::new((g, joined_after, u)))),
        );
        self.write(
            GROUPS,
            &st.membership_insert,
            Box::new((u, g, joined_after, role)),
            Some((&st.membership_delete, Box::new((u, g)))),
        );
        self.member_lists.remove(&id_of(g));
        Ok(())
    }

    pub(super) async fn create_group(
        &mut self,
        creator: UserId,
        name: &str,
        description: &str,
    ) -> Result<GroupId> {
        let Some(creator_name) = self.user_name(creator).await? else {
            return Err(StoreError::UnknownUser(creator));
        };
        let c = key(creator).ok_or(StoreError::UnknownUser(creator))?;
        let st = Arc::clone(&self.st);
        let g = self.take_group_id().await?;
        self.write(
            GROUPS,
            &st.group_insert,
            Box::new((g, name.to_owned(), description.to_owned(), c)),
            Some((&st.group_delete, Box::new((g,)))),
        );
        self.add_member(g, c, creator_name, ROLE_CREATOR).await?;
        Ok(id_of(g))
    }

    pub(super) async fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo> {
        if !self.group_exists(group).await? {
            return Err(StoreError::UnknownGroup(group));
        }
        let Some(name) = self.user_name(user).await? else {
            return Err(StoreError::UnknownUser(user));
        };
        if self.is_member(group, user).await? {
            return Err(StoreError::AlreadyMember { user, group });
        }
        let (Some(g), Some(u)) = (key(group), key(user)) else {
            return Err(StoreError::UnknownGroup(group));
        };
        self.add_member(g, u, name, ROLE_MEMBER).await?;
        self.group_infos(&[g])
            .await?
            .pop()
            .flatten()
            .ok_or(StoreError::UnknownGroup(group))
    }

    pub(super) async fn groups(&mut self, user: UserId) -> Result<Vec<GroupInfo>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(GROUPS).await?;
        let ids: Vec<i64> = self
            .read_all::<(i64, Option<i64>)>(&self.st.membership_list, (u,))
            .await?
            .into_iter()
            .filter(|(_, joined_after)| joined_after.is_some())
            .map(|(g, _)| g)
            .collect();
        Ok(self
            .group_infos(&ids)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    pub(super) async fn group_members(&mut self, group: GroupId) -> Result<Vec<UserId>> {
        let ids = self.member_ids(group).await?;
        // A group has members as long as it exists: none means no group
        // (never created, or deleted by its last member leaving).
        if ids.is_empty() {
            return Err(StoreError::UnknownGroup(group));
        }
        Ok(ids.to_vec())
    }

    pub(super) async fn group(&mut self, group: GroupId) -> Result<Option<GroupInfo>> {
        let Some(g) = key(group) else {
            return Ok(None);
        };
        Ok(self.group_infos(&[g]).await?.pop().flatten())
    }

    /// The head and member rows of group `g` and the `user_groups` row of
    /// `user`, read at once.
    pub(super) async fn group_state(&mut self, g: i64, user: Option<i64>) -> Result<GroupState> {
        self.settle(GROUPS).await?;
        let st = &self.st;
        let membership = async {
            match user {
                Some(u) => {
                    self.read_one::<MembershipRow>(&st.membership_get, (u, g))
                        .await
                }
                None => Ok(None),
            }
        };
        let (head, rows, membership) = future::try_join3(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_all::<MemberRow>(&st.member_list, (g,)),
            membership,
        )
        .await?;
        Ok(GroupState {
            head: head.filter(|(name, _, _)| name.is_some()),
            rows,
            membership,
        })
    }

    /// Deletes every row that makes `u` a member of `g` (their
    /// `group_members` rows among `rows`, and `membership`, their
    /// `user_groups` row); undone by writing them back as read.
    pub(super) fn drop_member(
        &mut self,
        g: i64,
        u: i64,
        rows: &[MemberRow],
        membership: Option<MembershipRow>,
    ) {
        let st = Arc::clone(&self.st);
        for (joined_after, _, name, role) in rows.iter().filter(|row| row.1 == u) {
            let undo = name.clone().map(|name| {
                let values: Values =
                    Box::new((g, *joined_after, u, name, role.unwrap_or(ROLE_MEMBER)));
                (&st.member_insert, values)
            });
            self.write(
                GROUPS,
                &st.member_delete,
                Box::new((g, *joined_after, u)),
                undo,
            );
        }
        if let Some((joined_after, role)) = membership {
            let undo = joined_after.map(|joined_after| {
                let values: Values = Box::new((u, g, joined_after, role.unwrap_or(ROLE_MEMBER)));
                (&st.membership_insert, values)
            });
            self.write(GROUPS, &st.membership_delete, Box::new((u, g)), undo);
        }
        self.member_lists.remove(&id_of(g));
    }

    /// Makes `heir` (their earliest `group_members` row) the creator of `g`:
    /// the role in both membership tables, and the head's `creator`.
    pub(super) fn hand_over(&mut self, g: i64, heir: (i64, i64), state: &GroupState) {
        let st = Arc::clone(&self.st);
        let (joined_after, h) = heir;
        let was = state
            .rows
            .iter()
            .find(|row| row.0 == joined_after && row.1 == h)
            .and_then(|row| row.3)
            .unwrap_or(ROLE_MEMBER);
        self.write(
            GROUPS,
            &st.member_role_set,
            Box::new((ROLE_CREATOR, g, joined_after, h)),
            Some((&st.member_role_set, Box::new((was, g, joined_after, h)))),
        );
        self.write(
            GROUPS,
            &st.membership_role_set,
            Box::new((ROLE_CREATOR, h, g)),
            Some((&st.membership_role_set, Box::new((ROLE_MEMBER, h, g)))),
        );
        // Never written on a missing head: that would make one up.
        if let Some((_, _, creator)) = state.head {
            self.write(
                GROUPS,
                &st.group_creator_set,
                Box::new((h, g)),
                Some((&st.group_creator_set, Box::new((creator, g)))),
            );
        }
        self.member_lists.remove(&id_of(g));
    }

    /// Deletes the head of `g`, which nobody belongs to any more, once the
    /// deletes of the last member's rows have landed: a crash in between
    /// leaves a head with no member, which reads as a deleted group.
    pub(super) async fn delete_group(&mut self, g: i64, head: Option<HeadRow>) -> Result<()> {
        let Some((name, description, creator)) = head else {
            return Ok(());
        };
        self.settle(GROUPS).await?;
        let st = Arc::clone(&self.st);
        let undo: Values = Box::new((
            g,
            name.unwrap_or_default(),
            description.unwrap_or_default(),
            creator,
        ));
        self.write(
            GROUPS,
            &st.group_delete,
            Box::new((g,)),
            Some((&st.group_insert, undo)),
        );
        self.member_lists.remove(&id_of(g));
        Ok(())
    }

    pub(super) async fn leave_group(&mut self, group: GroupId, user: UserId) -> Result<()> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        let state = self.group_state(g, key(user)).await?;
        let Some(u) = key(user).filter(|&u| state.has(u)) else {
            return Err(if state.exists() {
                StoreError::NotAMember { user, group }
            } else {
                StoreError::UnknownGroup(group)
            });
        };
        let order = Self::member_order(state.rows.clone());
        let was_creator = order.first().is_some_and(|row| row.1 == u);
        let heir = order
            .iter()
            .find(|row| row.1 != u)
            .map(|(joined_after, h, _, _)| (*joined_after, *h));
        self.drop_member(g, u, &state.rows, state.membership);
        match heir {
            Some(heir) if was_creator => self.hand_over(g, heir, &state),
            Some(_) => {}
            None => self.delete_group(g, state.head).await?,
        }
        Ok(())
    }

    pub(super) async fn remove_member(
        &mut self,
        group: GroupId,
        by: UserId,
        member: UserId,
    ) -> Result<()> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        let state = self.group_state(g, key(member)).await?;
        if !state.exists() {
            return Err(StoreError::UnknownGroup(group));
        }
        let creator = Self::member_order(state.rows.clone())
            .first()
            .map(|row| row.1);
        if creator.is_none() || creator != key(by) {
            return Err(StoreError::NotCreator { user: by, group });
        }
        let Some(m) = key(member).filter(|&m| Some(m) != creator && state.has(m)) else {
            return Err(StoreError::NotAMember {
                user: member,
                group,
            });
        };
        self.drop_member(g, m, &state.rows, state.membership);
        Ok(())
    }

    // ---- messages ----
}
