@testable import CrsnapCore
import Foundation
import XCTest

/// Property-style tests of the retention plan over random histories: whatever
/// the history and policy, prune never removes what it must keep.
final class RetentionTests: XCTestCase {
    /// SplitMix64: a small seeded generator, so a failure can be replayed.
    struct Rng: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    func randomHistory(_ rng: inout Rng, now: Date) -> (snaps: [SnapshotInfo], undo: Int?) {
        var snaps: [SnapshotInfo] = []
        var number = 0
        var age = Double.random(in: 0...(60 * 86400), using: &rng)
        var openPre: Int?
        for _ in 0..<Int.random(in: 0...25, using: &rng) {
            number += Int.random(in: 1...3, using: &rng)  // deleted numbers leave gaps
            age = max(0, age - Double.random(in: 0...(3 * 86400), using: &rng))
            var role = [SnapshotRole.single, .pre, .post, .preRollback].randomElement(using: &rng)!
            var pair: Int?
            if role == .post {
                if let p = openPre { pair = p; openPre = nil } else { role = .single }
            }
            if role == .pre { openPre = number }
            snaps.append(SnapshotInfo(number: number, created: now.addingTimeInterval(-age), tagged: Bool.random(using: &rng),
                                      role: role, pair: pair, imagesBytes: UInt64.random(in: 1...(100 << 20), using: &rng)))
        }
        let undo = snaps.filter { $0.role == .preRollback }.randomElement(using: &rng)?.number
        return (snaps, Bool.random(using: &rng) ? undo : nil)
    }

    func randomPolicy(_ rng: inout Rng) -> RetentionPolicy {
        RetentionPolicy(keepLast: Bool.random(using: &rng) ? Int.random(in: 1...8, using: &rng) : nil,
                        keepTagged: Bool.random(using: &rng),
                        olderThan: Bool.random(using: &rng) ? Double.random(in: 0...(30 * 86400), using: &rng) : nil,
                        maxImagesBytes: Int.random(in: 0...3, using: &rng) == 0 ? UInt64.random(in: 0...(500 << 20), using: &rng) : nil)
    }

    func testPlanNeverRemovesWhatItMustKeep() {
        let now = Date()
        for seed in 0..<3000 {
            var rng = Rng(state: UInt64(seed))
            let (snaps, undo) = randomHistory(&rng, now: now)
            let policy = randomPolicy(&rng)
            let plan = Set(Retention.plan(snaps, policy: policy, now: now, undoNeeds: undo))
            let ctx = "seed \(seed), policy \(policy), plan \(plan.sorted())"
            let numbers = Set(snaps.map(\.number))
            XCTAssertTrue(plan.isSubset(of: numbers), ctx)
            if let newest = numbers.max() { XCTAssertFalse(plan.contains(newest), "newest kept; \(ctx)") }
            if let undo { XCTAssertFalse(plan.contains(undo), "undo's snapshot kept; \(ctx)") }
            if policy.keepTagged {
                XCTAssertTrue(snaps.filter { $0.tagged && plan.contains($0.number) }.isEmpty, "tagged kept; \(ctx)")
            }
            if !policy.hasLimit { XCTAssertTrue(plan.isEmpty, ctx) }
            if policy.maxImagesBytes == nil {
                if let k = policy.keepLast {
                    let lastK = snaps.sorted { $0.number > $1.number }.prefix(k).map(\.number)
                    XCTAssertTrue(plan.isDisjoint(with: lastK), "last \(k) kept; \(ctx)")
                }
                if let age = policy.olderThan {
                    XCTAssertTrue(snaps.filter { now.timeIntervalSince($0.created) <= age && plan.contains($0.number) }.isEmpty,
                                  "younger than the age kept; \(ctx)")
                }
            }
            for s in snaps {
                guard let p = s.pair, numbers.contains(p) else { continue }
                XCTAssertEqual(plan.contains(s.number), plan.contains(p), "pair \(p)/\(s.number) together; \(ctx)")
            }
            if let max = policy.maxImagesBytes {
                // Whatever is left over the limit is only what may not go.
                let left = snaps.filter { !plan.contains($0.number) }
                let total = left.reduce(UInt64(0)) { $0 + $1.imagesBytes }
                if total > max {
                    let deletable = left.filter { s in
                        s.number != numbers.max() && s.number != undo && !(policy.keepTagged && s.tagged) && s.pair == nil
                            && !snaps.contains { $0.pair == s.number }
                    }
                    XCTAssertTrue(deletable.isEmpty, "over the size limit with deletable singles left: \(deletable.map(\.number)); \(ctx)")
                }
            }
        }
    }

    func testPlanExamples() {
        let now = Date()
        func s(_ n: Int, days: Double, tag: Bool = false, role: SnapshotRole = .single, pair: Int? = nil) -> SnapshotInfo {
            SnapshotInfo(number: n, created: now.addingTimeInterval(-days * 86400), tagged: tag, role: role, pair: pair, imagesBytes: 10)
        }
        let h = [s(1, days: 30, tag: true), s(2, days: 20), s(3, days: 10, role: .pre), s(4, days: 9, role: .post, pair: 3),
                 s(5, days: 2), s(6, days: 1)]
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(keepLast: 2), now: now, undoNeeds: nil), [1, 2, 3, 4])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(keepLast: 2, keepTagged: true), now: now, undoNeeds: nil), [2, 3, 4])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(keepLast: 3), now: now, undoNeeds: nil), [1, 2],
                       "@4 is among the last 3, so its pair @3 stays too")
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(olderThan: 15 * 86400), now: now, undoNeeds: nil), [1, 2])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(keepLast: 1, olderThan: 15 * 86400), now: now, undoNeeds: 2), [1])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(maxImagesBytes: 35), now: now, undoNeeds: nil), [1, 2, 3, 4])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(keepTagged: true), now: now, undoNeeds: nil), [], "no limit")
    }

    func testMaxSizeCountsImagesAndExclusiveFileBytes() {
        let now = Date()
        func s(_ n: Int, images: UInt64, files: UInt64) -> SnapshotInfo {
            SnapshotInfo(number: n, created: now.addingTimeInterval(Double(n - 10) * 3600), tagged: false, role: .single,
                         pair: nil, imagesBytes: images, fsExclusiveBytes: files)
        }
        let h = [s(1, images: 10, files: 100), s(2, images: 10, files: 0), s(3, images: 10, files: 5)]
        // Images alone (30) fit in 50; with @1's 100 exclusive bytes they do not.
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(maxImagesBytes: 50), now: now, undoNeeds: nil), [1])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(maxImagesBytes: 135), now: now, undoNeeds: nil), [])
        XCTAssertEqual(Retention.plan(h, policy: RetentionPolicy(maxImagesBytes: 10), now: now, undoNeeds: nil), [1, 2],
                       "the newest stays whatever it costs")
    }

    func testParseAgeAndSize() throws {
        XCTAssertEqual(try Retention.parseAge("7d"), 7 * 86400)
        XCTAssertEqual(try Retention.parseAge("90m"), 5400)
        XCTAssertEqual(try Retention.parseSize("2G"), 2 << 30)
        XCTAssertEqual(try Retention.parseSize("512"), 512)
        for bad in ["", "7", "d", "-1d", "7x"] {
            XCTAssertThrowsError(try Retention.parseAge(bad), bad) { XCTAssertEqual(($0 as? CrsnapError)?.kind, .usage) }
        }
        for bad in ["", "G", "2X", "-1"] {
            XCTAssertThrowsError(try Retention.parseSize(bad), bad)
        }
    }
}
