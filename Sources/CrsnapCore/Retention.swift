import FSSnapshot
import Foundation

/// How many snapshots a container keeps. Saved per container with
/// `crsnap prune NAME --save ...` and applied by `prune` and after every take.
///
/// A snapshot goes only when every limit that is set agrees: beyond the newest
/// `keepLast` AND older than `olderThan`. `maxImagesBytes` then deletes the
/// oldest remaining candidates until the container's snapshots fit: their
/// images and their files' exclusive bytes (`Snapshots.filesystemBytes`).
/// Never deleted: the newest snapshot, tagged ones with `keepTagged`, the
/// snapshot the last rollback's undo needs, and half of a pre/post pair whose
/// other half stays.
public struct RetentionPolicy: Codable, Equatable, Sendable {
    public var keepLast: Int?
    public var keepTagged: Bool
    /// Seconds.
    public var olderThan: Double?
    /// The size limit (`--max-size`): images and exclusive file bytes (the
    /// name is older than the second half, and kept for saved policies).
    public var maxImagesBytes: UInt64?

    public init(keepLast: Int? = nil, keepTagged: Bool = false, olderThan: Double? = nil, maxImagesBytes: UInt64? = nil) {
        self.keepLast = keepLast
        self.keepTagged = keepTagged
        self.olderThan = olderThan
        self.maxImagesBytes = maxImagesBytes
    }

    /// No limit set: nothing is ever deleted.
    public var hasLimit: Bool { keepLast != nil || olderThan != nil || maxImagesBytes != nil }
}

/// What retention needs to know of a snapshot.
public struct SnapshotInfo: Equatable, Sendable {
    public var number: Int
    public var created: Date
    public var tagged: Bool
    public var role: SnapshotRole
    public var pair: Int?
    public var imagesBytes: UInt64
    /// The bytes of its files no other snapshot or the live container
    /// shares, as measured before the prune (0 where unknown).
    public var fsExclusiveBytes: UInt64

    public init(number: Int, created: Date, tagged: Bool, role: SnapshotRole, pair: Int?, imagesBytes: UInt64,
                fsExclusiveBytes: UInt64 = 0) {
        self.number = number
        self.created = created
        self.tagged = tagged
        self.role = role
        self.pair = pair
        self.imagesBytes = imagesBytes
        self.fsExclusiveBytes = fsExclusiveBytes
    }

    init(_ m: Manifest, fsExclusiveBytes: UInt64 = 0) {
        self.init(number: m.number, created: m.created, tagged: m.tag != nil, role: m.snapshotRole, pair: m.pair,
                  imagesBytes: m.stats.images_bytes, fsExclusiveBytes: fsExclusiveBytes)
    }

    /// What the size limit counts.
    var bytes: UInt64 { imagesBytes + fsExclusiveBytes }
}

public enum Retention {
    /// The numbers to delete under `policy` (pure; the property tests drive it).
    public static func plan(_ snaps: [SnapshotInfo], policy: RetentionPolicy, now: Date, undoNeeds: Int?) -> [Int] {
        guard policy.hasLimit, !snaps.isEmpty else { return [] }
        let newestFirst = snaps.sorted { $0.number > $1.number }
        var keep = Set<Int>([newestFirst[0].number])
        if let u = undoNeeds { keep.insert(u) }
        if policy.keepTagged { keep.formUnion(snaps.filter(\.tagged).map(\.number)) }
        var candidates = Set<Int>()
        for (index, s) in newestFirst.enumerated() where !keep.contains(s.number) {
            var go: Bool?
            if let n = policy.keepLast { go = index >= n }
            if let age = policy.olderThan { go = (go ?? true) && now.timeIntervalSince(s.created) > age }
            if go == true { candidates.insert(s.number) }
        }
        // A pair goes together or stays together.
        let present = Set(snaps.map(\.number))
        var partner: [Int: Int] = [:]
        for s in snaps { if let p = s.pair, present.contains(p) { partner[s.number] = p; partner[p] = s.number } }
        for n in candidates where partner[n].map({ !candidates.contains($0) }) == true {
            candidates.remove(n)
        }
        // The space limit: delete the oldest units (a snapshot, or a pair)
        // that may go, until the rest fit.
        if let max = policy.maxImagesBytes {
            let bytes = Dictionary(uniqueKeysWithValues: snaps.map { ($0.number, $0.bytes) })
            var total = snaps.filter { !candidates.contains($0.number) }.reduce(UInt64(0)) { $0 + $1.bytes }
            for s in newestFirst.reversed() where total > max && !candidates.contains(s.number) {
                let unit = [s.number] + (partner[s.number].map { [$0] } ?? [])
                if unit.contains(where: { keep.contains($0) }) { continue }
                for n in unit where !candidates.contains(n) {
                    candidates.insert(n)
                    total -= bytes[n] ?? 0
                }
            }
        }
        return candidates.sorted()
    }

    static func policyPath(_ c: Container) -> String { "\(c.dir)/retention.json" }

    public static func savedPolicy(_ c: Container) -> RetentionPolicy? {
        try? JSON.read(RetentionPolicy.self, from: policyPath(c))
    }

    public static func save(_ policy: RetentionPolicy, for c: Container) throws {
        try JSON.write(policy, to: policyPath(c))
    }

    /// What to delete now, and why the rest stays.
    /// Extents shared only with a snapshot this deletes count as exclusive to
    /// the others only afterwards: the next prune sees them.
    static func planFor(_ c: Container, policy: RetentionPolicy) -> [Int] {
        let measure = policy.maxImagesBytes != nil
        let snaps = c.manifests().map { m in
            SnapshotInfo(m, fsExclusiveBytes: measure ? Snapshots.filesystemBytes(c, m.number)?.exclusive ?? 0 : 0)
        }
        return plan(snaps, policy: policy, now: Date(), undoNeeds: Undo.needed(c))
    }

    /// Deletes what the policy says; returns the ids deleted (or that would be, with dryRun).
    public static func prune(store: Store, name: String, policy: RetentionPolicy?, dryRun: Bool) throws -> [String] {
        // Each deletion is journaled (Snapshots.deleteLocked): an interrupted
        // prune leaves at most one deletion for the next command to finish.
        try Container.locked(store: store, name: name) { c in
            guard let p = policy ?? savedPolicy(c), p.hasLimit else {
                throw CrsnapError(.usage, "prune \(name): no limit given (--keep-last, --older-than, --max-size) and none saved for this container")
            }
            let doomed = planFor(c, policy: p)
            if !dryRun {
                for n in doomed { try Snapshots.deleteLocked(c, n) }
            }
            return doomed.map { "\(name)@\($0)" }
        }
    }

    /// After a take: apply the container's saved policy, if any. A failure
    /// here never fails the take; it is said on stderr.
    static func applyAfterTake(_ c: Container) {
        guard let p = savedPolicy(c), p.hasLimit else { return }
        for n in planFor(c, policy: p) {
            do {
                try Snapshots.deleteLocked(c, n)
                Progress.note("retention: deleted \(c.name)@\(n)")
            } catch {
                Progress.warn("retention: could not delete \(c.name)@\(n): \(error)")
            }
        }
    }

    /// "7d", "12h", "30m", "45s", "2w" → seconds.
    public static func parseAge(_ text: String) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        guard let u = text.last, let mult = units[u], let v = Double(text.dropLast()), v >= 0 else {
            throw CrsnapError(.usage, "invalid age \"\(text)\": expected a number and a unit (s, m, h, d, w), e.g. 7d")
        }
        return v * mult
    }

    /// "500M", "2G", "1024K", "123" (bytes) → bytes.
    public static func parseSize(_ text: String) throws -> UInt64 {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        if let v = UInt64(text) { return v }
        guard let u = text.uppercased().last, let mult = units[u], let v = UInt64(text.dropLast()) else {
            throw CrsnapError(.usage, "invalid size \"\(text)\": expected bytes or a number with K, M, G or T, e.g. 2G")
        }
        return v * mult
    }
}

/// Progress and phase timings on stderr, only when stderr is a terminal
/// (scripts see just the id on stdout). Warnings always go out.
public enum Progress {
    static let interactive = isatty(2) == 1 || ProcessInfo.processInfo.environment["CRSNAP_VERBOSE"] == "1"

    public static func note(_ text: String) {
        if interactive { FileHandle.standardError.write(Data("crsnap: \(text)\n".utf8)) }
    }

    public static func warn(_ text: String) {
        FileHandle.standardError.write(Data("crsnap: warning: \(text)\n".utf8))
    }
}
