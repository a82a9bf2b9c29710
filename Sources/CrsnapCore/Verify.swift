import CCrypto
import FSSnapshot
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 of the CRIU image files, recorded in the manifest at take time
/// (after the tasks are thawed) and checked before every restore: restoring
/// images is a trust boundary.
public enum Checksums {
    /// Files CRIU writes into the images directory on restore, or that carry
    /// no state: not recorded, not checked.
    static func isRecorded(_ name: String) -> Bool {
        !(name.hasSuffix(".log") || name.hasPrefix("stats-") || name.hasPrefix("."))
    }

    public static func sha256(_ path: String) throws -> String {
        let fd = try Sys.open(path, O_RDONLY)
        defer { Sys.close(fd) }
        var digest = [UInt8](repeating: 0, count: 32)
        var bytes: UInt64 = 0
        let r = digest.withUnsafeMutableBufferPointer { d in
            withUnsafeMutablePointer(to: &bytes) { b in
                b.withMemoryRebound(to: CUnsignedLongLong.self, capacity: 1) { crsnap_sha256_fd(fd, d.baseAddress, $0) }
            }
        }
        if r != 0 { throw SystemError("sha256", path, errno: errno) }
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    /// name → sha256 of every recorded file in `dir` (CRIU's images directory is flat).
    public static func images(_ dir: String) throws -> [String: String] {
        var out: [String: String] = [:]
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: dir)
        } catch {
            throw SystemError("list", dir, errno: ENOENT)
        }
        for name in names where isRecorded(name) {
            let st = try Sys.fileStatus("\(dir)/\(name)")
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw CrsnapError(.failed, "\(dir)/\(name) is not a regular file")
            }
            out[name] = try sha256("\(dir)/\(name)")
        }
        return out
    }
}

/// `crsnap verify ID`, also run before every rollback: the snapshot is
/// complete and its images are the ones crsnap wrote.
public enum Verify {
    public struct Report: Codable {
        public var id: String
        public var ok: Bool
        public var problems: [String]
        public var images_checked: Int
    }

    public static func verify(store: Store, id: SnapshotID) throws -> Report {
        let c = try Container(store: store, name: id.container)
        try c.mustExist()
        return try check(c, id.number)
    }

    /// Checks snapshot `n` of `c` end to end; never changes anything.
    /// Throws not-found when there is no such snapshot at all.
    static func check(_ c: Container, _ n: Int) throws -> Report {
        let id = "\(c.name)@\(n)"
        let dir = c.snapshotDir(n)
        guard Sys.exists("\(dir)/manifest.json") else {
            throw CrsnapError(.notFound, "no snapshot \(id) in store \(c.store.path)")
        }
        var problems: [String] = []
        var checked = 0
        let m: Manifest
        do {
            m = try JSON.read(Manifest.self, from: "\(dir)/manifest.json")
        } catch {
            return Report(id: id, ok: false, problems: ["manifest.json does not parse"], images_checked: 0)
        }
        if m.id != id || m.container != c.name || m.number != n {
            problems.append("manifest.json names \(m.id), not \(id)")
        }
        let fs = "\(dir)/fs"
        if !c.store.backend.isVolume(fs) {
            problems.append("its filesystem snapshot \(fs) is missing")
        } else if c.store.backend.capabilities.contains(.readOnlySnapshots), (try? Btrfs.isReadOnly(fs)) != true {
            problems.append("its filesystem snapshot \(fs) is not read-only")
        }
        for f in m.unlinked ?? [] {
            let saved = "\(dir)/unlinked/\(f.file)"
            guard let st = try? Sys.fileStatus(saved), (st.st_mode & S_IFMT) == S_IFREG else {
                problems.append("the unlinked file \(f.path) it holds (\(saved)) is missing")
                continue
            }
            if UInt64(st.st_size) != f.size {
                problems.append("the unlinked file \(f.path) it holds (\(saved)) has \(st.st_size) bytes, not \(f.size)")
            }
        }
        let images = "\(dir)/images"
        // A files-only snapshot has no images: none is recorded, and none may appear.
        if !m.isFilesOnly && !Sys.exists("\(images)/inventory.img") {
            problems.append("\(images)/inventory.img is missing")
        }
        if let recorded = m.images_sha256, !recorded.isEmpty || m.isFilesOnly {
            let present = Set(((try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []).filter(Checksums.isRecorded))
            for (name, want) in recorded.sorted(by: { $0.key < $1.key }) {
                guard present.contains(name) else {
                    problems.append("image \(name) is missing")
                    continue
                }
                let got = (try? Checksums.sha256("\(images)/\(name)")) ?? "unreadable"
                checked += 1
                if got != want { problems.append("image \(name) does not match its recorded checksum (corrupted or truncated)") }
            }
            for name in present.subtracting(recorded.keys).sorted() {
                problems.append("image \(name) was not written by this snapshot's take")
            }
        } else {
            problems.append("manifest.json records no image checksums")
        }
        return Report(id: id, ok: problems.isEmpty, problems: problems, images_checked: checked)
    }

    /// Throws a failed error naming the snapshot and every problem.
    static func require(_ c: Container, _ n: Int, doing what: String) throws {
        let r = try check(c, n)
        guard r.ok else {
            throw CrsnapError(.failed, "snapshot \(r.id) is damaged: \(r.problems.joined(separator: "; "))\n\(what) refused; nothing was changed")
        }
    }
}
