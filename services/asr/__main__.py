from parley.service import main
from services.asr.service import AsrStage

main(AsrStage)
