//! Membership statements within a transaction, each for a whole batch: member rows,
//! users' room counts, rooms' member counts. The statements themselves are each
//! dialect's own ([`super::postgres`], [`super::sqlite`]).

use std::collections::HashSet;

use super::*;

/// A batch's member writes, applied in this order: members added (to rooms that
/// exist, which they are not members of yet), members removed, one room fewer
/// counted for each of `released` (distinct), member counts moved.
pub struct MemberWrites<'a> {
    pub added: &'a [(&'a RoomId, &'a Member)],
    pub removed: &'a [(&'a str, &'a str)],
    pub released: &'a [&'a str],
    pub counts: &'a [(&'a RoomId, i64)],
}

impl MemberWrites<'_> {
    /// Whether one statement can apply them: it moves a count (so that it returns a
    /// row to carry the deletions' count), and no key is both added and removed (that
    /// must insert, then delete, and the parts of one statement all see the rows as
    /// they were before it). The membership writer takes one change per user into a
    /// batch, so its batches always fit; the check keeps the store right on its own.
    fn fit_one_statement(&self) -> bool {
        if self.counts.is_empty() {
            return false;
        }
        let removed: HashSet<(&str, &str)> = self.removed.iter().copied().collect();
        self.added
            .iter()
            .all(|(room, m)| !removed.contains(&(room.as_str(), m.user_id.as_str())))
    }
}

impl Tx {
    /// Applies a batch's member writes; returns how many member rows went, and the
    /// rooms whose counts moved, after. On PostgreSQL one round trip where it can be
    /// (a batch of joins and leaves spent four on these), otherwise a statement each.
    pub async fn write_members(
        &mut self,
        writes: MemberWrites<'_>,
        now: UnixMicros,
    ) -> Result<(u64, Vec<Room>)> {
        if let TxInner::Postgres(inner) = &mut self.inner
            && writes.fit_one_statement()
        {
            let mut released = writes.released.to_vec();
            released.sort_unstable();
            let result = bounded(postgres::write_members(inner, &writes, &released, now)).await;
            self.reach.observe(&result);
            let (removed, rows) = result?;
            let rooms = rows
                .into_iter()
                .map(Room::try_from)
                .collect::<Result<_>>()?;
            return Ok((removed, rooms));
        }
        self.insert_members(writes.added).await?;
        let removed = self.delete_members(writes.removed).await?;
        self.release_room_slots(writes.released).await?;
        let rooms = self.add_member_counts(writes.counts, now).await?;
        Ok((removed, rooms))
    }

    /// The members among `(room, user)` keys, with their rooms' ids.
    pub async fn members_among(&mut self, keys: &[(&str, &str)]) -> Result<Vec<(String, Member)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = by_dialect!(self, members_among(keys))?;
        rows.into_iter()
            .map(|r| Ok((r.room_id, Member::try_from(r.member)?)))
            .collect()
    }

    /// Counts one more room for each of `users` (distinct) unless that would exceed
    /// `limit` (0 means unlimited); returns the users whose slot was claimed.
    pub async fn claim_room_slots(&mut self, users: &[&str], limit: u32) -> Result<Vec<String>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // Sorted, so that two batches touch their users' rows in one order.
        let mut users = users.to_vec();
        users.sort_unstable();
        by_dialect!(self, claim_room_slots(&users, limit))
    }

    /// Counts one room fewer for each of `users` (distinct).
    pub async fn release_room_slots(&mut self, users: &[&str]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut users = users.to_vec();
        users.sort_unstable();
        by_dialect!(self, release_room_slots(&users))
    }

    /// Adds members to rooms that exist and that they are not members of yet; each
    /// starts as seen at its join time.
    pub async fn insert_members(&mut self, members: &[(&RoomId, &Member)]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        by_dialect!(self, insert_members(members))
    }

    /// Removes members by `(room, user)` key; returns how many rows went.
    pub async fn delete_members(&mut self, keys: &[(&str, &str)]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        by_dialect!(self, delete_members(keys))
    }

    /// Adds a delta to each room's member count (recording when a room became
    /// empty) and returns the rooms after.
    pub async fn add_member_counts(
        &mut self,
        deltas: &[(&RoomId, i64)],
        now: UnixMicros,
    ) -> Result<Vec<Room>> {
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let rows = by_dialect!(self, add_member_counts(deltas, now))?;
        rows.into_iter().map(Room::try_from).collect()
    }

    /// Gives a member of a room `role`; returns the member, `None` if not a member.
    pub async fn set_member_role(
        &mut self,
        room_id: &RoomId,
        user_id: &str,
        role: crate::domain::Role,
    ) -> Result<Option<Member>> {
        let row: Option<MemberRow> = on_tx!(self, c => {
            sqlx::query_as(concat!(
                "UPDATE members SET role = $3 WHERE room_id = $1 AND user_id = $2 RETURNING ",
                member_columns!()
            ))
            .bind(room_id.as_str())
            .bind(user_id)
            .bind(rows::role_column(role))
            .fetch_optional(c)
            .await
        })?;
        row.map(Member::try_from).transpose()
    }

    /// Reads one member of a room.
    pub async fn member(&mut self, room_id: &RoomId, user_id: &str) -> Result<Option<Member>> {
        let row: Option<MemberRow> = on_tx!(self, c => {
            sqlx::query_as(member_by_key!())
            .bind(room_id.as_str())
            .bind(user_id)
            .fetch_optional(c)
            .await
        })?;
        row.map(Member::try_from).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn one_statement_only_where_no_key_is_added_and_removed() {
        let room = RoomId::parse("r").unwrap();
        let member = |user: &str| Member {
            user_id: user.into(),
            display_name: user.into(),
            role: Role::Member,
            online: false,
            joined_at: UnixMicros(1),
        };
        let a = member("a");
        let added = [(&room, &a)];
        let counts = [(&room, 0)];
        let writes = |removed, counts| MemberWrites {
            added: &added,
            removed,
            released: &[],
            counts,
        };
        assert!(writes(&[("r", "b")], &counts).fit_one_statement());
        assert!(
            !writes(&[("r", "a")], &counts).fit_one_statement(),
            "a is added and removed"
        );
        assert!(
            !writes(&[], &[]).fit_one_statement(),
            "no count moves: no row comes back"
        );
    }
}
