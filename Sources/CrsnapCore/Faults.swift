import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Test hooks: named steps of take, rollback and delete where a test can make
/// crsnap fail, die (SIGKILL to itself) or pause, to prove that the store and
/// the container survive it. For tests only: honoured only when
/// CRSNAP_TEST_HOOKS=1 is also set; otherwise CRSNAP_FAULT is ignored.
///
/// CRSNAP_FAULT is a comma-separated list of `[MODE:]POINT`:
///   POINT or fail:POINT   the step throws an error naming the point
///   failonce:POINT        the same, the first time the process reaches it
///   enospc:POINT          the step fails as the filesystem would when full
///                         (ENOSPC), to reach steps a real full store cannot
///                         be made to fail at on demand
///   kill:POINT            crsnap SIGKILLs itself at the step
///   killafter=MS:POINT    at the step, crsnap arms a SIGKILL to itself MS
///                         milliseconds later (to die inside a long call)
///   sleep=MS:POINT        the step waits MS milliseconds
///
/// Points, in order:
///   take.locked, take.pre-dump, take.frozen (crsnap froze the cgroup,
///   CRIU has not seized the tasks yet), take.post-dump (frozen, before the fs
///   snapshot), take.fs-snapshot (frozen, in place of the fs snapshot),
///   take.fs-snapshotted (frozen, right after it), take.unlinked (frozen,
///   before the unlinked open files are captured), take.unlinked-scratch
///   (frozen, overlay root: a scratch file for the clone is on the overlay),
///   take.dumped (CRIU returned; the cgroup is still frozen),
///   take.thawed (thawed, before checksums), take.staged (images staged in
///   memory, not yet copied into the store),
///   take.manifest (before it is written), take.renamed (snapshot in place,
///   journal not ended);
///   rollback.verified, rollback.killed (tree killed, volumes untouched),
///   rollback.aside (old volume aside, no new one), rollback.cloned (new
///   volume, not mounted), rollback.restore (mounted, before the restore),
///   rollback.restoring (the monitor has the restore request; crsnap has not
///   had the reply), rollback.restored (running, old volume not yet deleted);
///   delete.unlisted (manifest gone, snapshot directory still there);
///   monitor.restore (in the monitor, which reads CRSNAP_FAULT from the
///   environment it was started with, just before it calls CRIU to restore);
///   monitor.lock-repair (in the monitor: the restored processes hold none
///   of their file locks and cannot take them again, as if another process
///   held them).
///
/// Switches (any mode): take.no-reflink makes the capture of unlinked open
/// files copy their bytes, as on a filesystem that cannot clone;
/// take.freeze-stuck makes crsnap's freeze never see the cgroup FROZEN, as
/// with a task that cannot be frozen (the take times out);
/// monitor.lazy-pages-killed makes the monitor SIGKILL CRIU's lazy-pages
/// daemon as soon as a lazy restore has returned, before the daemon has
/// brought all the memory back.
public enum Faults {
    public enum Action: Equatable {
        case fail, failOnce, enospc, kill, sleep(Int), killAfter(Int)
    }

    public static var enabled: Bool { ProcessInfo.processInfo.environment["CRSNAP_TEST_HOOKS"] == "1" }

    /// The action CRSNAP_FAULT asks for at `point`, if test hooks are on.
    static func action(at point: String, env: [String: String] = ProcessInfo.processInfo.environment) -> Action? {
        guard env["CRSNAP_TEST_HOOKS"] == "1", let spec = env["CRSNAP_FAULT"] else { return nil }
        for item in spec.split(separator: ",").map(String.init) {
            guard let colon = item.lastIndex(of: ":") else {
                if item == point { return .fail }
                continue
            }
            guard String(item[item.index(after: colon)...]) == point else { continue }
            let mode = String(item[..<colon])
            if mode == "fail" { return .fail }
            if mode == "failonce" { return .failOnce }
            if mode == "kill" { return .kill }
            if mode == "enospc" { return .enospc }
            if mode.hasPrefix("sleep="), let ms = Int(mode.dropFirst(6)) { return .sleep(ms) }
            if mode.hasPrefix("killafter="), let ms = Int(mode.dropFirst(10)) { return .killAfter(ms) }
        }
        return nil
    }

    nonisolated(unsafe) static var fired: Set<String> = []

    public static func check(_ point: String) throws {
        guard let a = action(at: point) else { return }
        switch a {
        case .fail:
            throw CrsnapError(.failed, "injected fault at \(point) (CRSNAP_FAULT)")
        case .failOnce:
            guard !fired.contains(point) else { return }
            fired.insert(point)
            throw CrsnapError(.failed, "injected fault at \(point) (CRSNAP_FAULT)")
        case .enospc:
            throw SystemError("write", "\(point) (injected by CRSNAP_FAULT)", errno: ENOSPC)
        case .kill:
            FileHandle.standardError.write(Data("crsnap: test hook: SIGKILL at \(point)\n".utf8))
            kill(getpid(), SIGKILL)
            while true { pause() }
        case .sleep(let ms):
            usleep(UInt32(ms) * 1000)
        case .killAfter(let ms):
            FileHandle.standardError.write(Data("crsnap: test hook: SIGKILL \(ms) ms after \(point)\n".utf8))
            Thread.detachNewThread {
                usleep(UInt32(ms) * 1000)
                kill(getpid(), SIGKILL)
            }
        }
    }
}
