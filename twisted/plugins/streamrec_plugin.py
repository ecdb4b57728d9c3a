from twisted.application.service import ServiceMaker

streamrec = ServiceMaker(
    "streamrec", "streamrec.tap", "Record live video sources and cut MP4 clips", "streamrec"
)
