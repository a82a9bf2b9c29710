import ArgumentParser
import CrsnapCore
import Foundation

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List a container's snapshots.",
        discussion: """
        TYPE is single (take), pre or post (a pair: post(N) names its pre), or
        pre-rollback (what a rollback replaced; `rollback --undo` returns to it);
        fs-only for a snapshot of the files alone (take --fs-only or
        --fallback fs-only; ",fs-only" after another type).
        --json prints one object per snapshot: id, number, type, pair, tag,
        created, age_seconds, pause_ms, frozen_ms, fs_snapshot_ms, images_bytes,
        stopped, fs_only, fs_exclusive_bytes,
        fs_uuid (the identity of its files across stores, which send --parent
        and migrate match), received_from. IMAGES is the size of the CRIU
        images; FS EXCL the bytes of the snapshot's files that no other
        snapshot and not the live container share (the data extents that
        deleting it frees now; "?" where the filesystem cannot tell). PAUSE(ms) is how long the container stood still for the take,
        from crsnap's freeze request to the thaw: what a client of the service
        waited at most ("-" for snapshots from before crsnap measured it).
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON.") var json = false
    @Argument(help: "Container name.") var name: String

    struct Row: Encodable {
        var id: String
        var number: Int
        var type: String
        var pair: String?
        var tag: String?
        var created: Date
        var age_seconds: Int
        var pause_ms: Double?
        var frozen_ms: Double
        var fs_snapshot_ms: Double
        var images_bytes: UInt64
        var stopped: Bool
        var fs_only: Bool
        /// nil: the filesystem cannot tell.
        var fs_exclusive_bytes: UInt64?
        /// The identity of its files across stores (what send/receive and
        /// migrate match parents by); nil where there is none (copy store).
        var fs_uuid: String?
        /// An imported or received snapshot: its id where it came from.
        var received_from: String?
    }

    func run() throws {
        try reporting {
            try Names.validate(name)
            let c = try Container(store: try storeOptions.openExisting(), name: name)
            try c.mustExist()
            let ms = c.manifests()
            for n in c.snapshotNumbers() where !ms.contains(where: { $0.number == n }) {
                FileHandle.standardError.write(Data("crsnap: snapshot \(name)@\(n) is damaged: its manifest does not parse (crsnap verify \(name)@\(n))\n".utf8))
            }
            // A pre shows the post that pairs with it, and the other way round.
            var partner: [Int: Int] = [:]
            for m in ms { if let p = m.pair { partner[m.number] = p; partner[p] = m.number } }
            let rows = ms.map { m in
                Row(id: m.id, number: m.number, type: m.snapshotRole.rawValue, pair: partner[m.number].map { "\(name)@\($0)" },
                    tag: m.tag, created: m.created, age_seconds: Int(Date().timeIntervalSince(m.created)),
                    pause_ms: m.stats.pause_ms, frozen_ms: m.stats.frozen_ms, fs_snapshot_ms: m.stats.fs_snapshot_ms,
                    images_bytes: m.stats.images_bytes, stopped: m.stopped ?? false, fs_only: m.isFilesOnly,
                    fs_exclusive_bytes: Snapshots.filesystemBytes(c, m.number)?.exclusive,
                    fs_uuid: Snapshots.identity(c, m.number), received_from: m.received?.snapshot)
            }
            if json { return try printJSON(rows) }
            printTable(["ID", "TYPE", "TAG", "CREATED", "AGE", "PAUSE(ms)", "IMAGES", "FS EXCL"], rows.map { r in
                var type = r.pair.map { "\(r.type)(\($0.split(separator: "@").last!))" } ?? r.type
                if r.fs_only { type = type == "single" ? "fs-only" : type + ",fs-only" }
                return [r.id, type + (r.stopped ? ",stopped" : ""), r.tag ?? "-", formatDate(r.created), formatAge(r.age_seconds),
                        r.pause_ms.map { String(format: "%.0f", $0) } ?? "-", formatBytes(r.images_bytes),
                        r.fs_exclusive_bytes.map(formatBytes) ?? "?"]
            })
        }
    }
}

func formatAge(_ s: Int) -> String {
    if s < 120 { return "\(s)s" }
    if s < 7200 { return "\(s / 60)m" }
    if s < 172_800 { return "\(s / 3600)h" }
    return "\(s / 86400)d"
}
