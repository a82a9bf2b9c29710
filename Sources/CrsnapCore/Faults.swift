import Foundation

/// Test hook: CRSNAP_FAULT=POINT makes the named step fail, so tests can prove
/// that a failure there leaves the container running and the store unchanged.
/// Points: take.pre-dump, take.fs-snapshot, take.manifest, rollback.restore.
public enum Faults {
    public static func check(_ point: String) throws {
        if let f = ProcessInfo.processInfo.environment["CRSNAP_FAULT"], f == point {
            throw CrsnapError(.failed, "injected fault at \(point) (CRSNAP_FAULT)")
        }
    }
}
