// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "crsnap",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "crsnap", targets: ["crsnap"]),
        .library(name: "CrsnapCore", targets: ["CrsnapCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C: libmount, libbtrfsutil, and the few things Swift must not do after fork
        // (namespace setup, setns, exec) or cannot call (variadic prctl, ioctl, cmsg).
        .target(
            name: "CLibmount",
            linkerSettings: [.linkedLibrary("mount"), .linkedLibrary("btrfsutil")]
        ),
        .target(name: "FSSnapshot", dependencies: ["CLibmount"]),
        // SHA-256 of image files (libcrypto), for checksums recorded at take time.
        .target(name: "CCrypto", linkerSettings: [.linkedLibrary("crypto")]),
        // ptrace: a system call run inside a stopped process (file locks a restore lost).
        .target(name: "CInject"),
        .target(
            name: "ProcessCR",
            dependencies: ["CLibmount", "CInject", "FSSnapshot", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Proto"]
        ),
        // Containers with a network of their own: links, addresses and routes
        // over netlink (libnl-route-3), NAT and published ports (libnftables).
        .target(
            name: "CNetwork",
            cSettings: [.unsafeFlags(["-I/usr/include/libnl3"])],
            linkerSettings: [.linkedLibrary("nl-3"), .linkedLibrary("nl-route-3"), .linkedLibrary("nftables")]
        ),
        .target(name: "ContainerNetwork", dependencies: ["CNetwork", "FSSnapshot", "ProcessCR"]),
        // zstd (libzstd) for compressed archives.
        .systemLibrary(name: "CZstd"),
        // Moving snapshots: checksummed tar archives, zstd, chunked streams.
        .target(name: "SnapshotArchive", dependencies: ["CCrypto", "CZstd", "FSSnapshot"]),
        .target(name: "CrsnapCore", dependencies: ["FSSnapshot", "ProcessCR", "CCrypto", "ContainerNetwork", "SnapshotArchive"]),
        .executableTarget(
            name: "crsnap",
            dependencies: ["CrsnapCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(name: "CrsnapCoreTests", dependencies: ["CrsnapCore", "ContainerNetwork"]),
        .testTarget(name: "ProcessCRTests", dependencies: ["ProcessCR"]),
        .testTarget(name: "SnapshotArchiveTests", dependencies: ["SnapshotArchive", "FSSnapshot"]),
        // Workloads/ holds the Python programs the tests run inside containers (read by path).
        .testTarget(name: "IntegrationTests", dependencies: ["CrsnapCore", "FSSnapshot", "ContainerNetwork", "crsnap"], exclude: ["Workloads"]),
    ],
    swiftLanguageModes: [.v5]
)
