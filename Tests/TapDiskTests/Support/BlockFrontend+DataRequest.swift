import CLibAIO

@testable import TapDisk

extension BlockFrontend {
    /// A READ or WRITE of `segments` as a frontend may send it: a plain slot, or INDIRECT with its
    /// descriptors written on `descriptorPage` (the random-stream suites mix both).
    func dataRequest(
        write: Bool, id: UInt64, sector: UInt64, segments: [BlkifSegment], descriptorPage: UInt32?
    ) -> clibaio_blkif_request {
        guard let descriptorPage else {
            return write
                ? BlkifRequest.write(id: id, sector: sector, segments: segments)
                : BlkifRequest.read(id: id, sector: sector, segments: segments)
        }
        return indirectRequest(
            write: write, id: id, sector: sector, segments: segments, descriptorPage: descriptorPage)
    }
}
