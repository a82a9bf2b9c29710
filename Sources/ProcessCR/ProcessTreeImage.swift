import Foundation

/// One task of a dump as CRIU recorded it: its ids inside the container's
/// pid namespace (the pids it gets back on restore) and its name.
public struct CheckpointedProcess: Codable, Equatable {
    public var pid: UInt32
    public var ppid: UInt32
    public var pgid: UInt32
    public var sid: UInt32
    /// Its threads, itself included.
    public var threads: Int
    /// The task's name (comm, at most 15 bytes), as `ps -o comm` shows it.
    public var comm: String

    public init(pid: UInt32, ppid: UInt32, pgid: UInt32, sid: UInt32, threads: Int, comm: String) {
        (self.pid, self.ppid, self.pgid, self.sid, self.threads, self.comm) = (pid, ppid, pgid, sid, threads, comm)
    }
}

/// The process tree in a directory of CRIU images: pstree.img (one
/// `pstree_entry` per task, parents first) and each task's name from its
/// core-PID.img (`core_entry.tc`, a `task_core_entry`, its `comm`). Field
/// numbers are CRIU's (images/pstree.proto, images/core.proto).
public enum ProcessTreeImage {
    enum PstreeField { static let pid: UInt64 = 1, ppid: UInt64 = 2, pgid: UInt64 = 3, sid: UInt64 = 4, threads: UInt64 = 5 }
    enum CoreField { static let tc: UInt64 = 3 }
    enum TaskCoreField { static let comm: UInt64 = 6 }

    public static func read(imagesDir: String) throws -> [CheckpointedProcess] {
        let pstree = try CriuImageFile(path: "\(imagesDir)/pstree.img")
        return try pstree.entries.indices.map { k in
            let f = try pstree.fields(k)
            let b = pstree.bytes
            guard let pid = Wire.varintField(b, f, PstreeField.pid) else {
                throw CriuImageFile.Malformed(path: pstree.path, why: "entry \(k) has no pid")
            }
            func id(_ n: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: Wire.varintField(b, f, n) ?? 0) }
            return CheckpointedProcess(pid: UInt32(truncatingIfNeeded: pid), ppid: id(PstreeField.ppid),
                                       pgid: id(PstreeField.pgid), sid: id(PstreeField.sid),
                                       threads: max(1, threadCount(b, f)),
                                       comm: try comm(imagesDir: imagesDir, pid: pid))
        }
    }

    /// `threads` is a repeated uint32: one varint field each, or (packed) one
    /// length-delimited field of varints.
    static func threadCount(_ b: [UInt8], _ fields: [Wire.Field]) -> Int {
        fields.filter { $0.number == PstreeField.threads }.reduce(0) { n, f in
            guard f.wireType == 2 else { return n + 1 }
            var i = f.value.lowerBound, count = 0
            while i < f.value.upperBound, Wire.varint(b, &i) != nil { count += 1 }
            return n + count
        }
    }

    static func comm(imagesDir: String, pid: UInt64) throws -> String {
        let core = try CriuImageFile(path: "\(imagesDir)/core-\(pid).img")
        guard !core.entries.isEmpty else { throw CriuImageFile.Malformed(path: core.path, why: "no entry") }
        let b = core.bytes
        guard let tc = try core.fields(0).last(where: { $0.number == CoreField.tc && $0.wireType == 2 }),
              let inner = Wire.fields(b, tc.value),
              let name = inner.last(where: { $0.number == TaskCoreField.comm && $0.wireType == 2 }) else {
            throw CriuImageFile.Malformed(path: core.path, why: "no task name (tc.comm)")
        }
        return String(decoding: b[name.value], as: UTF8.self)
    }
}

/// The clocks of a dump's time namespace as CRIU recorded them
/// (timens-ID.img, one `timens_entry`: CLOCK_MONOTONIC and CLOCK_BOOTTIME as
/// the dumped tasks read them; images/timens.proto). A restore makes a new
/// time namespace whose offsets make those clocks carry on from here.
public struct TimeNamespaceImage: Codable, Equatable {
    /// Seconds.
    public var monotonic: Double
    public var boottime: Double

    enum Field { static let monotonic: UInt64 = 1, boottime: UInt64 = 2, sec: UInt64 = 1, nsec: UInt64 = 2 }

    /// Nil when the dump has no time namespace image.
    public static func read(imagesDir: String) throws -> TimeNamespaceImage? {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: imagesDir)) ?? [])
            .filter { $0.hasPrefix("timens-") && $0.hasSuffix(".img") }.sorted()
        guard let name = names.first else { return nil }
        let image = try CriuImageFile(path: "\(imagesDir)/\(name)")
        guard !image.entries.isEmpty else { throw CriuImageFile.Malformed(path: image.path, why: "no entry") }
        let b = image.bytes
        let fields = try image.fields(0)
        func seconds(_ number: UInt64) throws -> Double {
            guard let f = fields.last(where: { $0.number == number && $0.wireType == 2 }), let ts = Wire.fields(b, f.value),
                  let sec = Wire.varintField(b, ts, Field.sec) else {
                throw CriuImageFile.Malformed(path: image.path, why: "no clock \(number)")
            }
            return Double(sec) + Double(Wire.varintField(b, ts, Field.nsec) ?? 0) / 1e9
        }
        return TimeNamespaceImage(monotonic: try seconds(Field.monotonic), boottime: try seconds(Field.boottime))
    }
}
