import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// Watches a CRIU restore for a wait it would never end by itself: CRIU takes
/// the restored processes' file locks with blocking calls (F_SETLKW, flock),
/// so a lock that a process outside the container took meanwhile (on a
/// volume, a host path) holds the restore — and the rollback, and the
/// container's lock — for as long as the outsider keeps it. When a request
/// of the restoring tree has waited `patience` seconds for a lock held
/// outside, the watch kills the tree and CRIU with it (both are in the
/// container's cgroup), so the restore fails and the caller can bring back
/// the state from before, naming who held what.
final class LockWaitWatch {
    let cgroup: FreezerCgroup
    let patience: Double
    private let lock = NSLock()
    private var stopping = false
    private var found: [SharedLock] = []
    private let done = DispatchSemaphore(value: 0)

    init(cgroup: FreezerCgroup, patience: Double) {
        self.cgroup = cgroup
        self.patience = patience
    }

    func start() {
        Thread.detachNewThread { [self] in
            var since: Date?
            while !isStopping {
                let waiting = FileLocks.waitingOnOutside(Set(cgroup.procs()))
                if waiting.isEmpty {
                    since = nil
                } else if let s = since, Date().timeIntervalSince(s) >= patience {
                    lock.withLock { found = waiting }
                    try? cgroup.killAll()
                    break
                } else if since == nil {
                    since = Date()
                }
                usleep(100_000)
            }
            done.signal()
        }
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    /// Ends the watch; what it stopped the restore for, if it did.
    func stop() -> [SharedLock] {
        lock.withLock { stopping = true }
        done.wait()
        return lock.withLock { found }
    }

    static func message(_ locks: [SharedLock], patience: Double) -> String {
        "the restore waited \(Int(patience)) s for file locks that processes outside the container hold, and was stopped:\n  "
            + locks.map { "\($0.file): the snapshot's \($0.lock) is held by \($0.outside.joined(separator: ", ")) outside the container" }
            .joined(separator: "\n  ")
    }
}
