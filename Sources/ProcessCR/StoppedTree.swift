import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A process tree CRIU restored and left stopped (the restore's
/// leave-stopped option: CRIU sends each process SIGSTOP before it detaches,
/// so none runs an instruction of its own). crsnap mends what the restore
/// could not do right (file locks) and then lets the tree run.
public struct StoppedTree {
    /// The restored processes: host pid by pid inside the container.
    public let tasks: [Int32: pid_t]

    /// The processes among `candidates` (e.g. the container cgroup's) that
    /// live in the pid namespace of the restored root `root`.
    public init(root: pid_t, candidates: [pid_t]) {
        let ns = Proc.fdTarget(path: "/proc/\(root)/ns/pid")
        var tasks: [Int32: pid_t] = [:]
        for pid in candidates where pid > 1 {
            guard ns != nil, Proc.fdTarget(path: "/proc/\(pid)/ns/pid") == ns,
                  let inside = Proc.nsPids(pid).last else { continue }
            tasks[inside] = pid
        }
        self.tasks = tasks
    }

    /// Lets every process run (SIGCONT) except those that were stopped when
    /// the images were taken: CRIU recorded them as TASK_STOPPED
    /// (core-PID.img: CoreEntry 3 tc → TaskCoreEntry 1 task_state = 3).
    public func resume(imagesDir: String) throws {
        for (inside, host) in tasks.sorted(by: { $0.key < $1.key }) {
            if StoppedTree.wasStopped(imagesDir: imagesDir, pid: inside) { continue }
            try Safety.signal(host, SIGCONT)
        }
    }

    static func wasStopped(imagesDir: String, pid: Int32) -> Bool {
        guard let image = try? CriuImageFile(path: "\(imagesDir)/core-\(pid).img"), !image.entries.isEmpty,
              let core = try? image.fields(0),
              let tc = core.last(where: { $0.number == 3 && $0.wireType == 2 }),
              let task = Wire.fields(image.bytes, tc.value) else { return false }
        return Wire.varintField(image.bytes, task, 1) == 3
    }
}
