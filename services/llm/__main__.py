from parley.service import main
from services.llm.service import LlmStage

main(LlmStage)
