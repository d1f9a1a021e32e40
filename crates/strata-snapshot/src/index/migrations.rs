//! The index's schema, as a list of migrations applied in order.

use rusqlite_migration::{M, Migrations};

// Never edit a released migration: append a new one. A new checkout mode needs one too (an
// empty one will do): older versions refuse a newer schema, so none reads a mode it does not
// know. Version 1: layers, snapshots, tags,
// checkouts, leases. Version 2: shared caches and the views taken of them. Version 3: a
// layer's OCI identities (sha256 diff_id, blob digest and size), remembered once computed.
const MIGRATIONS_SLICE: &[M<'_>] = &[
    M::up(
        "CREATE TABLE layers (
        id TEXT PRIMARY KEY NOT NULL,
        uncompressed_size INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL,
        unpacked INTEGER NOT NULL DEFAULT 0,
        relocation_root BLOB,
        relocations BLOB,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY NOT NULL,
        parent TEXT REFERENCES snapshots(id) ON DELETE RESTRICT,
        layer TEXT NOT NULL REFERENCES layers(id) ON DELETE RESTRICT,
        depth INTEGER NOT NULL,
        root_path BLOB,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX snapshots_parent ON snapshots(parent);
    CREATE INDEX snapshots_last_used ON snapshots(last_used);
    CREATE INDEX snapshots_layer ON snapshots(layer);
    CREATE TABLE tags (
        name TEXT PRIMARY KEY NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE
    ) STRICT;
    CREATE INDEX tags_snapshot ON tags(snapshot);
    CREATE TABLE checkouts (
        dir BLOB PRIMARY KEY NOT NULL,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,
        mode TEXT NOT NULL,
        state_dir BLOB,
        root_path BLOB NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX checkouts_snapshot ON checkouts(snapshot);
    CREATE TABLE leases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX leases_snapshot ON leases(snapshot);",
    ),
    // A cache's current version is `snapshot` (none: empty). `generation` counts the releases
    // that replaced it; a view records the generation it was taken at, and its release wins
    // only if the generation is unchanged. Both tables pin the snapshots they name.
    M::up(
        "CREATE TABLE caches (
        name TEXT PRIMARY KEY NOT NULL,
        snapshot TEXT REFERENCES snapshots(id) ON DELETE RESTRICT,
        generation INTEGER NOT NULL,
        owner_uid INTEGER NOT NULL,
        owner_gid INTEGER NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX caches_snapshot ON caches(snapshot);
    CREATE TABLE cache_views (
        dir BLOB PRIMARY KEY NOT NULL,
        cache TEXT NOT NULL REFERENCES caches(name) ON DELETE RESTRICT,
        snapshot TEXT NOT NULL REFERENCES snapshots(id) ON DELETE RESTRICT,
        base_generation INTEGER NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        created INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX cache_views_cache ON cache_views(cache);
    CREATE INDEX cache_views_snapshot ON cache_views(snapshot);",
    ),
    // Computed on demand (reading the whole blob twice), so remembered: engines and
    // registries name layers by them. All three or none.
    M::up(
        "ALTER TABLE layers ADD COLUMN oci_diff_id TEXT;
    ALTER TABLE layers ADD COLUMN oci_digest TEXT;
    ALTER TABLE layers ADD COLUMN oci_size INTEGER;",
    ),
];

pub(super) const MIGRATIONS: Migrations<'_> = Migrations::from_slice(MIGRATIONS_SLICE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }
}
