// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "tapdiskd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TapDisk", targets: ["TapDisk"]),
        .executable(name: "tapdiskd", targets: ["tapdiskd"]),
        .executable(name: "tapdisk-exporter", targets: ["tapdisk-exporter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Only the exporter uses these: the per-disk daemon stays free of NIO.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // The only C in the project: libaio plus the GNU/Linux-only names Swift cannot import.
        .target(
            name: "CLibAIO",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("aio")]
        ),
        .target(
            name: "TapDisk",
            dependencies: [
                "CLibAIO",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // The fault-injection seam exists only in debug (test) builds.
                .define("TAPDISK_FAULT_INJECTION", .when(configuration: .debug))
            ]
        ),
        .executableTarget(
            name: "tapdiskd",
            dependencies: [
                "TapDisk",
                // For `tapdiskd top`: the exporter's discovery and querying (no NIO in it).
                "TapDiskMetrics",
                "CLibAIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The host exporter (docs/operations.md, "Metrics"): scrapes every daemon's control socket
        // and serves Prometheus text; a separate executable so the daemon links no HTTP stack.
        // Querying daemons and rendering the exposition formats, apart from HTTP so the tests
        // exercise it without linking NIO.
        .target(name: "TapDiskMetrics", dependencies: ["TapDisk"]),
        .executableTarget(
            name: "tapdisk-exporter",
            dependencies: [
                "TapDiskMetrics",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Fuzz targets (docs/fuzzing.md): a plain build makes corpus replayers; scripts/fuzz.sh
        // rebuilds them with libFuzzer in .build/fuzz.
        .target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"),
        .executableTarget(
            name: "ControlRequestFuzzer", dependencies: ["TapDisk", "FuzzSupport"], path: "Fuzz/ControlRequestFuzzer"),
        .executableTarget(
            name: "VhostMessageFuzzer", dependencies: ["TapDisk", "FuzzSupport"], path: "Fuzz/VhostMessageFuzzer"),
        .executableTarget(
            name: "VirtqueueFuzzer", dependencies: ["TapDisk", "CLibAIO", "FuzzSupport"],
            path: "Fuzz/VirtqueueFuzzer"),
        .executableTarget(
            name: "BlkifValidatorFuzzer", dependencies: ["TapDisk", "CLibAIO", "FuzzSupport"],
            path: "Fuzz/BlkifValidatorFuzzer"),
        .executableTarget(
            name: "NBDProtocolFuzzer", dependencies: ["TapDisk", "FuzzSupport"], path: "Fuzz/NBDProtocolFuzzer"),
        .testTarget(
            name: "TapDiskTests",
            dependencies: ["TapDisk", "TapDiskMetrics", "CLibAIO"],
            swiftSettings: [.define("TAPDISK_FAULT_INJECTION", .when(configuration: .debug))],
            // Exports the test binary's counting malloc so the Swift runtime binds to it
            // (Support/AllocationCounter.swift; the allocation suites count heap allocations per request).
            linkerSettings: [.unsafeFlags(["-Xlinker", "--export-dynamic"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
