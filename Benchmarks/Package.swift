// swift-tools-version: 6.1
//
// In-process package-benchmark suite for tapdiskd's data path (engine + BlockFrontend over one
// memfd). Run from this directory: `swift package benchmark --target TapDiskBenchmarks`.
//
// Known limits (see Benchmarks/README.md):
//  - TapDisk exposes only `package` symbols; `package` access does not cross package
//    boundaries, so this separate package cannot see Engine/BlockFrontend and does not compile
//    against the current library. The allocation measurement that actually runs lives in
//    Tests/TapDiskTests/AllocationTests.swift.
//  - benchmark 1.38.1 on Linux with Swift 6.3 also pulls ordo-one/swift-runtime-interposer.
import PackageDescription

let package = Package(
    name: "TapDiskBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "TapDiskBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TapDisk", package: "main"),
            ],
            path: "TapDiskBenchmarks",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark")
            ]
        )
    ]
)
